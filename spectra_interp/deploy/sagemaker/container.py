"""`scripts/sagemaker_entry.py` inside the job: the sweep under SageMaker's container contract.

SageMaker's environment (`SM_CHANNEL_*`, `SM_MODEL_DIR`, `SM_NUM_GPUS`, the checkpoint folder)
becomes sweep flags; the results folder lives in the checkpoint folder, which SageMaker syncs to
S3, so a managed-spot restart resumes; the finished folder is copied to the model dir, which
SageMaker uploads when the job ends.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spectra_interp.deploy.sagemaker.request import (
    CHECKPOINT_LOCAL_PATH,
    CORPUS_CHANNEL,
    CORPUS_KEY,
    DEVICE_KEY,
    OUT_KEY,
    OVERWRITE_KEY,
    sweep_argv,
    sweep_hyperparameters,
)
from spectra_interp.errors import SpectraError

CHECKPOINT_ENV = "SPECTRA_SM_CHECKPOINT_DIR"
RESULTS_SUBDIR = "spectra-results"
RESTART_MARKER = ".spectra-job-rank{rank}.json"


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
        hps[CORPUS_KEY] = shlex.quote(str(sm.channels[CORPUS_CHANNEL]))
    if sm.num_gpus > 0:
        hps.setdefault(DEVICE_KEY, "cuda")
    hps[OUT_KEY] = shlex.quote(str(sm.results_dir))
    if restarted:
        hps.pop(OVERWRITE_KEY, None)
    return sweep_argv(hps)


def _marker(sm: SageMakerEnv) -> Path:
    """One marker per rank, so no rank reads another's before deciding."""
    return sm.checkpoint_dir / RESTART_MARKER.format(rank=sm.rank)


def is_restart(sm: SageMakerEnv) -> bool:
    """True when this job already started once with this checkpoint folder (spot restart)."""
    marker = _marker(sm)
    previous = json.loads(marker.read_text()).get("job") if marker.is_file() else None
    return sm.job_name is not None and previous == sm.job_name


def mark_started(sm: SageMakerEnv) -> None:
    sm.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    _marker(sm).write_text(json.dumps({"job": sm.job_name}) + "\n")


def publish_results(results: Path, model_dir: Path) -> None:
    """Copy the finished results folder into the model dir (uploaded to S3 when the job ends)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(results, model_dir, dirs_exist_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep with SageMaker's paths; rank 0 publishes the results when it succeeds."""
    from spectra_interp import cli

    sm = SageMakerEnv.from_environ()
    try:
        args = entry_argv(list(sys.argv[1:] if argv is None else argv), sm, is_restart(sm))
    except SpectraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mark_started(sm)
    print("spectra sweep " + shlex.join(args), flush=True)
    code = cli.main(args)
    if code == 0 and sm.rank == 0:
        publish_results(sm.results_dir, sm.model_dir)
        print(f"Results copied to {sm.model_dir}", flush=True)
    return code
