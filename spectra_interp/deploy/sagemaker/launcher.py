"""`scripts/launch_sagemaker.py`: print (--dry-run) or start the sweep as a SageMaker job.

Arguments the launcher does not know are sweep flags. Before anything is printed or sent, they
are parsed into the full `SweepConfig` exactly as the job will parse them (headline preset,
then a --config file, then the flags), so a misspelt flag or a bad value ends here with one
sentence and exit code 2 rather than in a paid job.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shlex
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import spectra_interp
from spectra_interp import cli, settings
from spectra_interp.config import SweepConfig
from spectra_interp.deploy.sagemaker import request as rq
from spectra_interp.deploy.sagemaker.container import RESULTS_SUBDIR
from spectra_interp.errors import SpectraError

PROG = "launch_sagemaker.py"
# Files of the checkout that the job needs; tests, notebooks and benchmarks stay home.
SOURCE_PATHS = ("pyproject.toml", "README.md", "spectra_interp", "scripts")


# --- the sweep flags, checked here as the job will read them ----------------------------------


def with_config_settings(spec: rq.JobSpec) -> rq.JobSpec:
    """`spec` with the settings its local --config file sets (SpectraError if it is unreadable)."""
    local = spec.local_config()
    if local is None:
        return spec
    names = frozenset(settings.read_toml(SweepConfig, local))
    return dataclasses.replace(spec, config_settings=names)


def check_corpus(spec: rq.JobSpec) -> None:
    """A corpus path on this machine is not in the job: refuse it and name --corpus-s3."""
    corpus = rq.sweep_hyperparameters(spec.sweep_args).get(rq.CORPUS_KEY)
    if corpus is None:
        return
    for part in shlex.split(corpus)[0].split(","):
        if Path(part).expanduser().exists():
            raise SpectraError(
                f"The corpus path {part!r} is on this machine, not in the job: upload it to S3 "
                "and pass --corpus-s3 s3://... instead."
            )


def sweep_config(spec: rq.JobSpec) -> SweepConfig:
    """The SweepConfig the job will run (its --config file read from this machine).

    Flags must be written in full: the job side finds --overwrite, --device and --out by name,
    so an abbreviation the sweep would accept (`--over`) could slip past it.
    """
    hps = spec.hyperparameters()
    local = spec.local_config()
    if local is not None:
        hps[rq.CONFIG_KEY] = shlex.quote(str(local))
    argv = rq.sweep_argv(hps)
    exact = cli.settings_parser(SweepConfig, PROG, "")
    exact.allow_abbrev = False
    exact.parse_args(argv)
    return cli.config_from_argv(SweepConfig, argv, PROG)


def checked(spec: rq.JobSpec) -> rq.JobSpec:
    """`spec` once its sweep flags pass every check the job would make, and the launcher's."""
    spec.hyperparameters()
    check_corpus(spec)
    spec = with_config_settings(spec)
    sweep_config(spec)
    return spec


# --- packing and sending ----------------------------------------------------------------------


def repo_root() -> Path:
    """The checkout holding the package (the job gets a tarball of it)."""
    return Path(spectra_interp.__file__).resolve().parent.parent


def requirements_text(pyproject: Path) -> str:
    """The package's runtime dependencies, for the container toolkit's `pip install -r`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return "\n".join(deps) + "\n"


def source_tarball(root: Path, config_file: Path | None = None) -> bytes:
    """The job's code: the package, its scripts, a requirements.txt made from pyproject, and
    the local --config file where the job's hyperparameters point."""
    if not (root / "pyproject.toml").is_file() or not (root / rq.ENTRY_SCRIPT).is_file():
        raise SpectraError(
            f"Launching needs a source checkout of spectra_interp; {root} has no pyproject.toml "
            f"and {rq.ENTRY_SCRIPT}."
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
            tar.add(config_file, arcname=rq.job_config_path(config_file))
    return buffer.getvalue()


def credentials_problem() -> str | None:
    """One sentence saying what is missing to launch, or None when boto3 finds credentials."""
    try:
        import boto3
    except ImportError:
        return (
            f"Launching needs boto3: install it with {rq.SDK_HINT} "
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


# --- the command line -------------------------------------------------------------------------


def launcher_parser() -> settings.Parser:
    headline = " ".join(rq.sweep_argv(rq.headline_hyperparameters()))
    parser = settings.Parser(
        prog=PROG,
        description=(
            "Start the sweep as a SageMaker training job. Every argument not listed here is a "
            "sweep flag (see scripts/sweep_heads.py --help) and is passed to the job as a "
            f"hyperparameter; the headline defaults ({cli.PHASE1_PRESET}) are {headline}."
        ),
        allow_abbrev=False,
    )
    add = parser.add_argument
    add(
        "--instance-type",
        default=rq.DEFAULT_INSTANCE_TYPE,
        help="default: %(default)s (A10G 24 GB)",
    )
    add("--instance-count", type=int, default=1, help="instances; >1 runs torchrun across them")
    add("--region", help="AWS region (default: your AWS configuration, else us-east-1)")
    add("--role", help="IAM role ARN the job runs as (default on a notebook instance: its role)")
    add("--s3", help="s3://bucket/prefix for code, checkpoints and results (required to launch)")
    add("--corpus-s3", help="s3:// prefix holding the corpus texts, mounted as the corpus channel")
    add("--spot", action="store_true", help="managed spot training; interruptions resume")
    add("--max-hours", type=float, default=24.0, help="stop the job after this long")
    add("--volume-gb", type=int, default=100, help="storage volume per instance")
    add("--image", help=f"training image URI (default: the SDK's PyTorch {rq.PYTORCH_VERSION} one)")
    add("--run-name", help="names the checkpoint/results prefix (default: model + config hash)")
    add("--job-name", help="training job name (default: run name + timestamp)")
    add("--token-env", default=rq.TOKEN_ENV, help="environment variable holding the HF token")
    add("--distributed", action=argparse.BooleanOptionalAction, default=None,
        help="torchrun distribution (default: on for several instances or GPUs)")  # fmt: skip
    add("--dry-run", action="store_true", help="print the job request as JSON; no AWS access")
    return parser


def spec_from_args(args: argparse.Namespace, sweep_args: list[str], dry_run: bool) -> rq.JobSpec:
    """A JobSpec from parsed launcher flags; without --dry-run, missing settings are errors."""
    region = args.region or local_region() or (rq.DEFAULT_REGION if dry_run else None)
    if region is None:
        raise SpectraError("No AWS region is configured: pass --region or set AWS_DEFAULT_REGION.")
    role = args.role or (None if dry_run else notebook_role())
    if role is None and not dry_run:
        raise SpectraError("Pass --role with the IAM role ARN the SageMaker job should run as.")
    if args.s3 is None and not dry_run:
        raise SpectraError("Pass --s3 s3://BUCKET/PREFIX: the job's code, checkpoints and results.")
    return rq.JobSpec(
        sweep_args=sweep_args,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        region=region,
        role=role or rq.ROLE_PLACEHOLDER,
        s3=args.s3 or rq.S3_PLACEHOLDER,
        corpus_s3=args.corpus_s3,
        spot=args.spot,
        max_hours=args.max_hours,
        volume_gb=args.volume_gb,
        image=args.image,
        run_name=args.run_name,
        distributed=args.distributed,
        token=os.environ.get(args.token_env) or None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print (--dry-run) or launch the job; 2 with one sentence on stderr on a user error."""
    try:
        args, rest = launcher_parser().parse_known_args(
            list(sys.argv[1:] if argv is None else argv)
        )
        sweep_args = [a for a in rest if a != "--"]
        spec = checked(spec_from_args(args, sweep_args, dry_run=True))
        run_name = spec.run_name or rq.default_run_name(spec.hyperparameters())
        job_name = args.job_name or rq.job_name_for(run_name)
        if args.dry_run:
            print(rq.render_request(rq.build_request(spec, job_name)))
            return 0
        problem = credentials_problem()
        if problem:
            raise SpectraError(problem)
        spec = dataclasses.replace(
            spec_from_args(args, spec.sweep_args, dry_run=False),
            config_settings=spec.config_settings,
        )
        request = rq.build_request(spec, job_name)
        code = source_tarball(repo_root(), spec.local_config())
        print(rq.render_request(request))
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
