"""Run the sweep as an AWS SageMaker training job.

Two sides, one module:

- the launcher (your laptop or a SageMaker notebook instance): `JobSpec` -> `build_request()`, a
  CreateTrainingJob request as a plain dict (so `--dry-run` prints exactly what is sent, offline),
  then `launch()` uploads the source tarball and calls boto3's `create_training_job`;
- the container (`scripts/sagemaker_entry.py`): `entry_main()` maps SageMaker's environment
  (`SM_CHANNEL_*`, `SM_MODEL_DIR`, `SM_NUM_GPUS`, `/opt/ml/checkpoints`) to sweep arguments, runs
  the sweep with its results folder inside the checkpoint folder (so a managed-spot restart
  resumes), and copies the finished folder to the model dir, which SageMaker uploads to S3.

The job runs in the AWS PyTorch training container, whose SageMaker training toolkit installs
`requirements.txt`, sets the `SM_*` variables, passes the hyperparameters as `--key value`
arguments and, with `sagemaker_torch_distributed_enabled`, starts the entry point with torchrun
on every instance. A Hugging Face token travels only as the job's `HF_TOKEN` environment variable
and is masked whenever a request is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spectra_interp.cli import EXPERIMENT_PRESET
from spectra_interp.errors import SpectraError

DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
DEFAULT_REGION = "us-east-1"
# AWS Deep Learning Container for PyTorch training: PyTorch 2.8.0, Python 3.12, CUDA 12.9,
# Ubuntu 22.04 (tag `2.8.0-gpu-py312`, the newest release SageMaker lists as supporting
# torch_distributed on GPU instances). transformer-lens 4 and transformers 5 need torch >= 2.6.
PYTORCH_VERSION = "2.8.0"
PYTHON_TAG = "py312"
DLC_ACCOUNT = "763104351884"
# Regions whose Deep Learning Containers live in another account (from the SageMaker SDK's table).
DLC_ACCOUNTS = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-east-2": "975050140332",
    "ap-northeast-3": "364406365360",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-6": "633930458069",
    "ap-southeast-7": "590183813437",
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "mx-central-1": "637423239942",
    "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353",
}
# GPUs per instance for the multi-GPU types one would pick for this sweep; others count as one.
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


def _as_hyperparameters(preset: Mapping[str, Any]) -> dict[str, str]:
    """Sweep settings as hyperparameter strings (`max_windows` -> `max-windows`)."""
    return {
        key.replace("_", "-"): ",".join(value) if isinstance(value, tuple) else str(value)
        for key, value in preset.items()
    }


# The headline run: the sweep's Phase 1 preset (Llama-3-8B, fp16, 4096 tokens, batch 1, 64
# windows, all controls). The device comes from the instance; flags given override the rest.
HEADLINE_SWEEP = _as_hyperparameters({k: v for k, v in EXPERIMENT_PRESET.items() if k != "device"})

# Flags the entry point sets from SageMaker's environment; a user may not pass them through.
RESERVED_FLAGS = ("out",)

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
CHECKPOINT_ENV = "SPECTRA_SM_CHECKPOINT_DIR"
RESULTS_SUBDIR = "spectra-results"
RESTART_MARKER = ".spectra-job-rank{rank}.json"
CORPUS_CHANNEL = "corpus"
ENTRY_SCRIPT = "scripts/sagemaker_entry.py"
TOKEN_ENV = "HF_TOKEN"
MASK = "****"
SECRET_KEY = re.compile(r"(TOKEN|PASSWORD|KEY)$|SECRET|CREDENTIAL", re.IGNORECASE)
ROLE_PLACEHOLDER = "arn:aws:iam::<account-id>:role/<SageMaker-execution-role>"
S3_PLACEHOLDER = "s3://<bucket>/spectra"
# Files of the checkout that the job needs; tests, notebooks and benchmarks stay home.
SOURCE_PATHS = ("pyproject.toml", "README.md", "spectra_interp", "scripts")
TRUE_VALUES = ("true", "True")
FALSE_VALUES = ("false", "False")


# --- sweep flags <-> hyperparameters -------------------------------------------------------


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
    """Hyperparameters back to sweep flags: "true" is a bare flag, "false" drops the flag."""
    argv: list[str] = []
    for key, raw in hps.items():
        value = str(raw)
        if value in TRUE_VALUES:
            argv.append(f"--{key}")
        elif value not in FALSE_VALUES:
            argv += [f"--{key}", *shlex.split(value)]
    return argv


# --- the job request -----------------------------------------------------------------------


@dataclass
class JobSpec:
    """What to launch. `sweep_args` are the sweep's own flags (see `scripts/sweep_heads.py`)."""

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

    def hyperparameters(self) -> dict[str, str]:
        """The headline defaults overlaid with the user's sweep flags."""
        given = sweep_hyperparameters(self.sweep_args)
        for flag in RESERVED_FLAGS:
            if flag in given:
                raise SpectraError(
                    f"--{flag} is set by the job (results go to the checkpoint folder and then to "
                    "the S3 output path); leave it out."
                )
        if self.corpus_s3 and "corpus" in given:
            raise SpectraError("Give the corpus either as --corpus or as --corpus-s3, not both.")
        return {**HEADLINE_SWEEP, **given}

    @property
    def gpus_per_instance(self) -> int:
        return GPUS_PER_INSTANCE.get(self.instance_type, 1)

    @property
    def is_distributed(self) -> bool:
        if self.distributed is not None:
            return self.distributed
        return self.instance_count > 1 or self.gpus_per_instance > 1


def image_uri(region: str, version: str = PYTORCH_VERSION, python: str = PYTHON_TAG) -> str:
    """The AWS PyTorch GPU training container for a region."""
    account = DLC_ACCOUNTS.get(region, DLC_ACCOUNT)
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/pytorch-training:{version}-gpu-{python}"


def default_run_name(hps: Mapping[str, str]) -> str:
    """A stable name per configuration: relaunching the same sweep finds its checkpoints."""
    identity = {k: v for k, v in sorted(hps.items()) if k != "overwrite"}
    digest = hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:8]
    model = str(hps.get("model", "model")).rstrip("/").rsplit("/", 1)[-1]
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
    """The CreateTrainingJob request for `spec` (pure: no AWS call, no file read)."""
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
            "TrainingImage": spec.image or image_uri(spec.region),
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


# --- launching -----------------------------------------------------------------------------


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def requirements_text(pyproject: Path) -> str:
    """The package's runtime dependencies, for the container toolkit's `pip install -r`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return "\n".join(deps) + "\n"


def source_tarball(root: Path, config_file: Path | None = None) -> bytes:
    """The job's code: the package, its scripts, and a requirements.txt made from pyproject."""
    if not (root / "pyproject.toml").is_file() or not (root / ENTRY_SCRIPT).is_file():
        raise SpectraError(
            f"Launching needs a source checkout of spectra_interp; {root} has no pyproject.toml "
            f"and {ENTRY_SCRIPT}."
        )

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if "__pycache__" in parts or ".ipynb_checkpoints" in parts or info.name.endswith(".pyc"):
            return None
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for rel in SOURCE_PATHS:
            if (root / rel).exists():
                tar.add(root / rel, arcname=rel, filter=skip)
        req = requirements_text(root / "pyproject.toml").encode()
        info = tarfile.TarInfo("requirements.txt")
        info.size = len(req)
        tar.addfile(info, io.BytesIO(req))
        if config_file is not None:
            tar.add(config_file, arcname=f"job_config/{config_file.name}")
    return buffer.getvalue()


def credentials_problem() -> str | None:
    """One sentence saying what is missing to launch, or None when boto3 finds credentials."""
    try:
        import boto3
    except ImportError:
        return (
            "Launching needs boto3: install it with pip install 'spectra_interp[sagemaker]' "
            "(use --dry-run to print the job request without it)."
        )
    session = boto3.Session()
    if session.get_credentials() is None:
        return (
            "No AWS credentials found: run `aws configure` or `aws sso login`, set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run this on a SageMaker notebook "
            "instance (use --dry-run to print the job request without credentials)."
        )
    return None


def local_region() -> str | None:
    """The region the local AWS configuration names (environment or ~/.aws/config), if any."""
    try:
        import boto3
    except ImportError:
        return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return boto3.Session().region_name


def notebook_role() -> str | None:
    """On a SageMaker notebook instance, its execution role (needs the SageMaker SDK)."""
    if not Path("/opt/ml/metadata/resource-metadata.json").is_file():
        return None
    try:
        from sagemaker.core.helper.session_helper import get_execution_role
    except ImportError:
        return None
    return get_execution_role()


def launch(request: Mapping[str, Any], code: bytes) -> str:
    """Upload the code tarball, create the training job, and return its ARN."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    hps = request["HyperParameters"]
    session = boto3.Session(region_name=hps["sagemaker_region"])
    bucket, _, key = hps["sagemaker_submit_directory"].removeprefix("s3://").partition("/")
    try:
        session.client("s3").put_object(Bucket=bucket, Key=key, Body=code)
        response = session.client("sagemaker").create_training_job(**request)
    except (BotoCoreError, ClientError) as err:
        raise SpectraError(f"AWS refused to start the job: {err}") from err
    return response["TrainingJobArn"]


def launcher_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch_sagemaker.py",
        description=(
            "Start the sweep as a SageMaker training job. Every argument not listed here is a "
            "sweep flag (see scripts/sweep_heads.py --help) and is passed to the job as a "
            "hyperparameter; the headline defaults are "
            + " ".join(f"--{k} {v}" for k, v in HEADLINE_SWEEP.items())
            + "."
        ),
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--instance-type", default=DEFAULT_INSTANCE_TYPE, help="default: %(default)s (A10G 24 GB)")
    add("--instance-count", type=int, default=1, help="instances; >1 runs torchrun across them")
    add("--region", help="AWS region (default: your AWS configuration, else us-east-1)")
    add("--role", help="IAM role ARN the job runs as (default on a notebook instance: its role)")
    add("--s3", help="s3://bucket/prefix for code, checkpoints and results (required to launch)")
    add("--corpus-s3", help="s3:// prefix holding the corpus texts, mounted as the corpus channel")
    add("--spot", action="store_true", help="managed spot training; interruptions resume")
    add("--max-hours", type=float, default=24.0, help="stop the job after this long")
    add("--volume-gb", type=int, default=100, help="storage volume per instance")
    add("--image", help=f"training image URI (default: PyTorch {PYTORCH_VERSION} GPU container)")
    add("--run-name", help="names the checkpoint/results prefix (default: model + config hash)")
    add("--job-name", help="training job name (default: run name + timestamp)")
    add("--token-env", default=TOKEN_ENV, help="environment variable holding the HF token")
    add("--distributed", action=argparse.BooleanOptionalAction, default=None,
        help="torchrun distribution (default: on for several instances or GPUs)")  # fmt: skip
    add("--dry-run", action="store_true", help="print the job request as JSON; no AWS access")
    return parser


def spec_from_args(args: argparse.Namespace, sweep_args: list[str], dry_run: bool) -> JobSpec:
    """A JobSpec from parsed launcher flags; without --dry-run, missing settings are errors."""
    region = args.region or local_region() or (DEFAULT_REGION if dry_run else None)
    if region is None:
        raise SpectraError("No AWS region is configured: pass --region or set AWS_DEFAULT_REGION.")
    role = args.role or (None if dry_run else notebook_role())
    if role is None and not dry_run:
        raise SpectraError("Pass --role with the IAM role ARN the SageMaker job should run as.")
    if args.s3 is None and not dry_run:
        raise SpectraError("Pass --s3 s3://BUCKET/PREFIX: the job's code, checkpoints and results.")
    return JobSpec(
        sweep_args=sweep_args,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        region=region,
        role=role or ROLE_PLACEHOLDER,
        s3=args.s3 or S3_PLACEHOLDER,
        corpus_s3=args.corpus_s3,
        spot=args.spot,
        max_hours=args.max_hours,
        volume_gb=args.volume_gb,
        image=args.image,
        run_name=args.run_name,
        distributed=args.distributed,
        token=os.environ.get(args.token_env) or None,
    )


def _job_config_file(spec: JobSpec) -> Path | None:
    """A local --config file travels in the code tarball; the flag is rewritten to point there."""
    hps = sweep_hyperparameters(spec.sweep_args)
    if "config" not in hps:
        return None
    path = Path(shlex.split(hps["config"])[0]).expanduser()
    if not path.is_file():
        raise SpectraError(f"Config file not found: {path}")
    hps["config"] = f"job_config/{path.name}"
    spec.sweep_args = sweep_argv(hps)
    return path


def _check_corpus(spec: JobSpec) -> None:
    corpus = sweep_hyperparameters(spec.sweep_args).get("corpus")
    if corpus is None:
        return
    for part in shlex.split(corpus)[0].split(","):
        if Path(part).expanduser().exists():
            raise SpectraError(
                f"The corpus path {part!r} is on this machine, not in the job: upload it to S3 "
                "and pass --corpus-s3 s3://... instead."
            )


def launcher_main(argv: Sequence[str] | None = None) -> int:
    """`scripts/launch_sagemaker.py`: print (--dry-run) or launch the job; 2 on a user error."""
    parser = launcher_parser()
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    sweep_args = [a for a in rest if a != "--"]
    try:
        spec = spec_from_args(args, sweep_args, dry_run=True)
        _check_corpus(spec)
        config_file = _job_config_file(spec)
        run_name = spec.run_name or default_run_name(spec.hyperparameters())
        job_name = args.job_name or job_name_for(run_name)
        if args.dry_run:
            print(render_request(build_request(spec, job_name)))
            return 0
        problem = credentials_problem()
        if problem:
            raise SpectraError(problem)
        spec = spec_from_args(args, spec.sweep_args, dry_run=False)
        request = build_request(spec, job_name)
        code = source_tarball(repo_root(), config_file)
        print(render_request(request))
        arn = launch(request, code)
    except SpectraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = request["OutputDataConfig"]["S3OutputPath"]
    print(f"Started {arn}")
    print(
        f"Checkpoints (live, resumable): {request['CheckpointConfig']['S3Uri']}/{RESULTS_SUBDIR}/"
    )
    print(f"Results when the job ends: {out}/{job_name}/output/model/")
    return 0


# --- the container side --------------------------------------------------------------------


@dataclass(frozen=True)
class SageMakerEnv:
    """The parts of SageMaker's container contract the sweep uses."""

    channels: dict[str, Path]
    model_dir: Path
    output_data_dir: Path
    num_gpus: int
    checkpoint_dir: Path
    job_name: str | None
    rank: int

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> SageMakerEnv:
        env = os.environ if env is None else env
        channels = {
            key.removeprefix("SM_CHANNEL_").lower(): Path(value)
            for key, value in env.items()
            if key.startswith("SM_CHANNEL_")
        }
        return cls(
            channels=channels,
            model_dir=Path(env.get("SM_MODEL_DIR", "/opt/ml/model")),
            output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")),
            num_gpus=int(env.get("SM_NUM_GPUS", "0") or 0),
            checkpoint_dir=Path(env.get(CHECKPOINT_ENV, CHECKPOINT_LOCAL_PATH)),
            job_name=env.get("TRAINING_JOB_NAME") or env.get("SM_TRAINING_JOB_NAME"),
            rank=int(env.get("RANK", "0") or 0),
        )

    @property
    def results_dir(self) -> Path:
        return self.checkpoint_dir / RESULTS_SUBDIR


def entry_argv(argv: Sequence[str], sm: SageMakerEnv, restarted: bool = False) -> list[str]:
    """The sweep's arguments inside the job: SageMaker's paths and devices filled in.

    The corpus channel (when mounted) replaces --corpus, --device defaults to cuda when the
    instance has GPUs, and --out is the results folder under the checkpoint folder. On a restart
    of the same job (a spot interruption) --overwrite is dropped so the sweep resumes.
    """
    hps = sweep_hyperparameters(argv, encoded=True)
    if CORPUS_CHANNEL in sm.channels:
        hps["corpus"] = shlex.quote(str(sm.channels[CORPUS_CHANNEL]))
    if sm.num_gpus > 0:
        hps.setdefault("device", "cuda")
    hps["out"] = shlex.quote(str(sm.results_dir))
    if restarted:
        hps.pop("overwrite", None)
    return sweep_argv(hps)


def _marker(sm: SageMakerEnv) -> Path:
    """One marker per rank, so no rank reads another's before deciding."""
    return sm.checkpoint_dir / RESTART_MARKER.format(rank=sm.rank)


def _is_restart(sm: SageMakerEnv) -> bool:
    """True when this job already started once with this checkpoint folder (spot restart)."""
    marker = _marker(sm)
    previous = json.loads(marker.read_text()).get("job") if marker.is_file() else None
    return sm.job_name is not None and previous == sm.job_name


def _mark_started(sm: SageMakerEnv) -> None:
    sm.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    _marker(sm).write_text(json.dumps({"job": sm.job_name}) + "\n")


def publish_results(results: Path, model_dir: Path) -> None:
    """Copy the finished results folder into the model dir (uploaded to S3 when the job ends)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(results, model_dir, dirs_exist_ok=True)


def entry_main(argv: Sequence[str] | None = None) -> int:
    """`scripts/sagemaker_entry.py`: run the sweep under SageMaker's container contract."""
    from spectra_interp import cli

    sm = SageMakerEnv.from_environ()
    try:
        args = entry_argv(list(sys.argv[1:] if argv is None else argv), sm, _is_restart(sm))
    except SpectraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _mark_started(sm)
    print("spectra sweep " + shlex.join(args), flush=True)
    code = cli.main(args)
    if code == 0 and sm.rank == 0:
        publish_results(sm.results_dir, sm.model_dir)
        print(f"Results copied to {sm.model_dir}", flush=True)
    return code
