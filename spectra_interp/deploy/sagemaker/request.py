"""The SageMaker training job as data: sweep flags <-> hyperparameters, and the CreateTrainingJob
request built from a `JobSpec` with no AWS call (so `--dry-run` prints exactly what is sent).

Sweep settings are not restated here: the headline run is the Phase 1 preset file, and every
setting the job code acts on (`--out`, `--corpus`, ...) is found by its field name in
`SweepConfig`, so a renamed flag fails at import rather than drifting.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from spectra_interp import cli, settings
from spectra_interp.config import SweepConfig
from spectra_interp.errors import SpectraError

DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
DEFAULT_REGION = "us-east-1"
# AWS Deep Learning Container for PyTorch training: PyTorch 2.8.0, Python 3.12, CUDA 12.9
# (`2.8.0-gpu-py312`, the newest release SageMaker lists as supporting torch_distributed on GPU
# instances). transformer-lens 4 and transformers 5 need torch >= 2.6.
PYTORCH_VERSION = "2.8.0"
PYTHON_TAG = "py312"
SDK_HINT = "pip install 'spectra_interp[sagemaker]'"
# GPUs per instance for the multi-GPU types one would pick for this sweep; others count as one.
# Kept here because the SDK's table (sagemaker.core.instance_types_gpu_info) lacks g6, g6e, p5en.
GPUS_PER_INSTANCE = {
    "ml.g5.12xlarge": 4,
    "ml.g5.24xlarge": 4,
    "ml.g5.48xlarge": 8,
    "ml.g6.12xlarge": 4,
    "ml.g6.24xlarge": 4,
    "ml.g6.48xlarge": 8,
    "ml.g6e.12xlarge": 4,
    "ml.g6e.24xlarge": 4,
    "ml.g6e.48xlarge": 8,
    "ml.p3.8xlarge": 4,
    "ml.p3.16xlarge": 8,
    "ml.p3dn.24xlarge": 8,
    "ml.p4d.24xlarge": 8,
    "ml.p4de.24xlarge": 8,
    "ml.p5.48xlarge": 8,
    "ml.p5e.48xlarge": 8,
    "ml.p5en.48xlarge": 8,
}

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
CORPUS_CHANNEL = "corpus"
ENTRY_SCRIPT = "scripts/sagemaker_entry.py"
# A local --config file travels in the code tarball under this folder.
JOB_CONFIG_DIR = "job_config"
CONFIG_KEY = "config"
TOKEN_ENV = "HF_TOKEN"
MASK = "****"
SECRET_KEY = re.compile(r"(TOKEN|PASSWORD|KEY)$|SECRET|CREDENTIAL", re.IGNORECASE)
ROLE_PLACEHOLDER = "arn:aws:iam::<account-id>:role/<SageMaker-execution-role>"
S3_PLACEHOLDER = "s3://<bucket>/spectra"
TRUE_VALUES = ("true", "True")
FALSE_VALUES = ("false", "False")


# --- sweep settings as hyperparameter keys --------------------------------------------------


def hp_key(name: str) -> str:
    """The hyperparameter key of the sweep setting `name`: its flag without the dashes."""
    for spec in settings.specs(SweepConfig):
        if spec.name == name:
            return spec.flag.removeprefix("--")
    raise KeyError(f"SweepConfig has no setting {name!r}.")


OUT_KEY = hp_key("out")
CORPUS_KEY = hp_key("corpus")
DEVICE_KEY = hp_key("device")
OVERWRITE_KEY = hp_key("overwrite")
# Flags the entry point sets from SageMaker's environment; a user may not pass them through.
RESERVED_KEYS = (OUT_KEY,)


def hyperparameter_value(value: Any) -> str:
    """A preset (TOML) value as hyperparameter text, shell-quoted like a flag's values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return shlex.quote(",".join(map(str, value)) or "none")
    return shlex.quote(str(value))


@cache
def _headline() -> tuple[tuple[str, str], ...]:
    preset = settings.read_preset(SweepConfig, cli.PHASE1_PRESET)
    return tuple(
        (hp_key(name), hyperparameter_value(value))
        for name, value in preset.items()
        if hp_key(name) != DEVICE_KEY
    )


def headline_hyperparameters() -> dict[str, str]:
    """The headline run: the Phase 1 preset file's settings, less the device (the instance
    decides), keyed by flag name."""
    return dict(_headline())


@cache
def _not_identity() -> frozenset[str]:
    """Keys of settings that leave the numbers alone (and their --no- forms)."""
    keys = set()
    for spec in settings.specs(SweepConfig):
        if not spec.meta.get("identity", True):
            key = spec.flag.removeprefix("--")
            keys |= {key, f"no-{key}"}
    return frozenset(keys)


def sweep_hyperparameters(argv: Sequence[str], encoded: bool = False) -> dict[str, str]:
    """Group sweep flags into hyperparameters: `--ctx 4096` -> {"ctx": "4096"}.

    A bare flag becomes "true"; the values after a flag are kept shell-quoted in one string.
    With `encoded`, argv is the toolkit's rendering of hyperparameters (`--key VALUE`, VALUE
    already shell-quoted), so a single value is taken as it is.
    """
    hps: dict[str, str] = {}
    key: str | None = None
    values: list[str] = []

    def close() -> None:
        if key is None:
            return
        if not values:
            hps[key] = "true"
        else:
            hps[key] = values[0] if encoded and len(values) == 1 else shlex.join(values)

    for token in argv:
        if token.startswith("--") and len(token) > 2:
            close()
            name, eq, value = token[2:].partition("=")
            key, values = name, ([value] if eq else [])
        elif key is None:
            raise SpectraError(f"Sweep arguments must start with a --flag; got {token!r}.")
        else:
            values.append(token)
    close()
    return hps


def sweep_argv(hps: Mapping[str, object]) -> list[str]:
    """Hyperparameters back to sweep flags: "true" is a bare flag, "false" its --no- form."""
    argv: list[str] = []
    for key, raw in hps.items():
        value = str(raw)
        if value in TRUE_VALUES:
            argv.append(f"--{key}")
        elif value in FALSE_VALUES:
            argv.append(f"--no-{key}")
        else:
            argv += [f"--{key}", *shlex.split(value)]
    return argv


def job_config_path(local: str | Path) -> str:
    """Where a local --config file is found inside the job (relative to the code folder)."""
    return f"{JOB_CONFIG_DIR}/{Path(local).name}"


# --- the job request ------------------------------------------------------------------------


@dataclass
class JobSpec:
    """What to launch. `sweep_args` are the sweep's own flags (see `scripts/sweep_heads.py`);
    `config_settings` names the settings a `--config` file sets, which the headline leaves to
    it (the order of a sweep: preset, then config file, then flags)."""

    sweep_args: list[str] = field(default_factory=list)
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    region: str = DEFAULT_REGION
    role: str = ROLE_PLACEHOLDER
    s3: str = S3_PLACEHOLDER
    corpus_s3: str | None = None
    spot: bool = False
    max_hours: float = 24.0
    volume_gb: int = 100
    image: str | None = None
    run_name: str | None = None
    distributed: bool | None = None
    token: str | None = None
    config_settings: frozenset[str] = frozenset()

    def local_config(self) -> Path | None:
        """The --config file named in the sweep flags, as a path on this machine."""
        value = sweep_hyperparameters(self.sweep_args).get(CONFIG_KEY)
        if value is None:
            return None
        parts = shlex.split(value)
        return Path(parts[0] if parts else value).expanduser()

    def hyperparameters(self) -> dict[str, str]:
        """The headline settings overlaid with the user's sweep flags, as the job gets them."""
        given = sweep_hyperparameters(self.sweep_args)
        for key in RESERVED_KEYS:
            if key in given:
                raise SpectraError(
                    f"--{key} is set by the job (results go to the checkpoint folder and then to "
                    "the S3 output path); leave it out."
                )
        if self.corpus_s3 and CORPUS_KEY in given:
            raise SpectraError(
                f"Give the corpus either as --{CORPUS_KEY} or as --corpus-s3, not both."
            )
        local = self.local_config()
        if local is not None:
            given[CONFIG_KEY] = shlex.quote(job_config_path(local))
        left_to_config = {hp_key(name) for name in self.config_settings}
        headline = {k: v for k, v in _headline() if k not in left_to_config}
        return {**headline, **given}

    @property
    def gpus_per_instance(self) -> int:
        return GPUS_PER_INSTANCE.get(self.instance_type, 1)

    @property
    def is_distributed(self) -> bool:
        if self.distributed is not None:
            return self.distributed
        return self.instance_count > 1 or self.gpus_per_instance > 1


def image_uri(region: str, instance_type: str = DEFAULT_INSTANCE_TYPE) -> str:
    """The AWS PyTorch training container for a region and instance type, from the SageMaker
    SDK's bundled table (offline); the GPU image for GPU instances."""
    try:
        from sagemaker.core import image_uris
    except ImportError as err:
        raise SpectraError(
            f"Finding the PyTorch training image needs the SageMaker SDK: {SDK_HINT} "
            "(or pass --image URI)."
        ) from err
    try:
        return image_uris.retrieve(
            "pytorch",
            region=region,
            version=PYTORCH_VERSION,
            py_version=PYTHON_TAG,
            instance_type=instance_type,
            image_scope="training",
        )
    except ValueError as err:
        raise SpectraError(
            f"The SageMaker SDK knows no PyTorch {PYTORCH_VERSION} {PYTHON_TAG} training image "
            f"for {instance_type} in {region} (pass --image URI, or upgrade the SDK with "
            "pip install -U sagemaker-core)."
        ) from err


def default_run_name(hps: Mapping[str, str]) -> str:
    """A stable name per configuration: relaunching the same sweep finds its checkpoints.

    Settings that leave the numbers alone (`identity=False` in config.py: --overwrite, --out,
    --report, ...) do not change the name.
    """
    identity = {k: v for k, v in sorted(hps.items()) if k not in _not_identity()}
    digest = hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:8]
    model = str(hps.get(hp_key("model"), "model")).rstrip("/").rsplit("/", 1)[-1]
    model = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return f"spectra-{model[:30].strip('-')}-{digest}"


def job_name_for(run_name: str, now: float | None = None) -> str:
    """`<run name>-<UTC timestamp>`, cut to SageMaker's 63 characters."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    base = re.sub(r"[^a-zA-Z0-9-]+", "-", run_name).strip("-")[: 62 - len(stamp)].rstrip("-")
    return f"{base}-{stamp}"


def s3_join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def build_request(spec: JobSpec, job_name: str) -> dict[str, Any]:
    """The CreateTrainingJob request for `spec` (no AWS call, no file read)."""
    if spec.instance_count < 1:
        raise SpectraError(f"--instance-count must be at least 1; got {spec.instance_count}.")
    for name, uri in (("--s3", spec.s3), ("--corpus-s3", spec.corpus_s3)):
        if uri is not None and not uri.startswith("s3://"):
            raise SpectraError(f"{name} must be an s3:// URI; got {uri!r}.")
    sweep = spec.hyperparameters()
    run_name = spec.run_name or default_run_name(sweep)
    run_root = s3_join(spec.s3, run_name)
    hyperparameters = {
        **sweep,
        "sagemaker_program": ENTRY_SCRIPT,
        "sagemaker_submit_directory": s3_join(run_root, "code", job_name, "sourcedir.tar.gz"),
        "sagemaker_region": spec.region,
        "sagemaker_container_log_level": "20",
        "sagemaker_job_name": job_name,
    }
    if spec.is_distributed:
        hyperparameters["sagemaker_torch_distributed_enabled"] = "true"
        hyperparameters["sagemaker_instance_type"] = spec.instance_type
    environment = {"HF_HOME": "/tmp/hf-home", "TOKENIZERS_PARALLELISM": "false"}
    if spec.token:
        environment[TOKEN_ENV] = spec.token
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": int(spec.max_hours * 3600)}
    if spec.spot:
        stopping["MaxWaitTimeInSeconds"] = 2 * stopping["MaxRuntimeInSeconds"]
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "RoleArn": spec.role,
        "AlgorithmSpecification": {
            "TrainingImage": spec.image or image_uri(spec.region, spec.instance_type),
            "TrainingInputMode": "File",
        },
        "HyperParameters": hyperparameters,
        "ResourceConfig": {
            "InstanceType": spec.instance_type,
            "InstanceCount": spec.instance_count,
            "VolumeSizeInGB": spec.volume_gb,
        },
        "OutputDataConfig": {
            "S3OutputPath": s3_join(run_root, "output"),
            "CompressionType": "NONE",
        },
        "CheckpointConfig": {
            "S3Uri": s3_join(run_root, "checkpoints"),
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spec.spot,
        "Environment": environment,
        "Tags": [{"Key": "project", "Value": "spectra"}, {"Key": "run", "Value": run_name}],
    }
    if spec.corpus_s3:
        request["InputDataConfig"] = [
            {
                "ChannelName": CORPUS_CHANNEL,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": spec.corpus_s3,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
        ]
    return request


def mask_secrets(request: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the request with every secret-looking environment value replaced by ****."""
    masked = json.loads(json.dumps(request))
    env = masked.get("Environment", {})
    for key in env:
        if SECRET_KEY.search(key):
            env[key] = MASK
    return masked


def render_request(request: Mapping[str, Any]) -> str:
    return json.dumps(mask_secrets(request), indent=2)
