"""What both phases share: the results folder, the run's identity and provenance, stages of
claimed per-window shards with resume, torchrun dealing and collecting (see `engine`)."""

from spectra_interp.runner.blocks import Block, Log, blocks, own_shards, rank_blocks, run_blocks
from spectra_interp.runner.engine import (
    Experiment,
    Run,
    Stage,
    Summary,
    check_context,
    release_memory,
    run_experiment,
)
from spectra_interp.runner.provenance import environment, git_commit, run_record

__all__ = [
    "Block",
    "Experiment",
    "Log",
    "Run",
    "Stage",
    "Summary",
    "blocks",
    "check_context",
    "environment",
    "git_commit",
    "own_shards",
    "rank_blocks",
    "release_memory",
    "run_blocks",
    "run_experiment",
    "run_record",
]
