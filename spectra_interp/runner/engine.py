"""The experiment engine both phases run on: prepare and check the results folder, record the
run's identity and provenance, then run the experiment's stages of claimed per-window shards
(resumable, shared, dealt to torchrun ranks, collected from other hosts) and its merge.

An experiment names its stages (a compute function per block of windows, `Stage`) and a merge
that returns a typed summary (`Experiment`); `run_experiment` does the rest. Reports are not
made here: the command line builds them after a run returns.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from spectra_interp import models
from spectra_interp.atomic import write_bytes_atomic
from spectra_interp.config import RunConfig
from spectra_interp.corpus import Windows
from spectra_interp.distributed import Dist, run_distributed
from spectra_interp.errors import SpectraError
from spectra_interp.results import store
from spectra_interp.results.layout import Layout
from spectra_interp.runner.blocks import Block, Log, own_shards, run_blocks

# One block's shards: `compute(tokens, window_ids)` gives one record (arrays) per window.
Compute = Callable[[torch.Tensor, list[int]], list[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class Stage:
    """One stage of per-window shards: its name (the shard folder), its windows and the compute
    function of one block of them."""

    name: str
    windows: Windows
    compute: Compute


class Summary(Protocol):
    """What a merge returns: a typed summary that writes itself as summary.json."""

    def to_json(self) -> dict[str, Any]: ...


class Experiment(Protocol):
    """A phase of the project on the engine: its settings and results folder, what it checks
    and writes before the stages, its stages, and its merge."""

    @property
    def config(self) -> RunConfig: ...

    @property
    def layout(self) -> Layout: ...

    @property
    def resume_stage(self) -> str:
        """The stage whose finished windows a resumed run reports."""
        ...

    def disk_bytes(self, hf_config: Any) -> int:
        """Check the settings against the model's config; the disk the run will write."""
        ...

    def record(self, run: Run) -> dict[str, Any]:
        """config.json as far as it is known (its head from `provenance.run_record`)."""
        ...

    def prepare(self, run: Run, tokenizer: Any) -> None:
        """Read or build (and on rank 0 write) the run's windows."""
        ...

    def stages(self, run: Run) -> Iterator[Stage]:
        """The stages in order; code between the yields runs after the previous stage is done
        on every rank and its shards are on rank 0."""
        ...

    def merge(self, run: Run) -> Summary:
        """Rank 0: the shards into the result files; the typed summary (written by the engine)."""
        ...


@dataclass
class Run:
    """One process's part of a run: where it writes, its rank, its device and dtype, the log and
    the timings of its stages."""

    config: RunConfig
    layout: Layout
    dist: Dist
    device: torch.device
    dtype: torch.dtype
    log: Log
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        """Whether this process is rank 0 (the one that writes shared files and merges)."""
        return self.dist.rank == 0

    def load_model(
        self,
        source: str,
        seed: int,
        windows: Windows,
        device_map: str | None = None,
        random_norms: bool = False,
    ) -> Any:
        """`source` on this run's device and dtype, its masks checked on the first of `windows`
        (`models.check_masks`, SpectraError) before any of its shards is written."""
        model = models.load_model(
            source, device=str(self.device), dtype=self.dtype, seed=seed, device_map=device_map,
            random_norms=random_norms,
        )  # fmt: skip
        models.check_masks(model, torch.from_numpy(windows.tokens[0]))
        return model

    def share_files(self, names: list[str]) -> None:
        """Rank 0's copies of `names` (relative to the folder) to every rank on another machine."""
        if self.dist.on_one_host():
            return
        import torch.distributed as torch_dist

        root = self.layout.root
        payload = [{n: (root / n).read_bytes() for n in names} if self.main else None]
        torch_dist.broadcast_object_list(payload, src=0)
        if not self.main and payload[0] is not None:
            for name, data in payload[0].items():
                write_bytes_atomic(root / name, data)

    def collect(self, stage: Stage) -> None:
        """Ranks on other machines send their shards of `stage` to rank 0."""
        if self.dist.on_one_host():
            return
        ids = stage.windows.meta["window_id"].to_numpy()
        mine = own_shards(ids, [stage.name], self.config.batch_size, self.layout, self.dist)
        self.dist.collect_files(self.layout.root, mine)


def check_context(config: RunConfig, hf_config: Any) -> None:
    """ctx beyond the model's positions is an error before any weights are loaded."""
    limit = getattr(hf_config, "max_position_embeddings", None) or getattr(
        hf_config, "n_positions", None
    )
    if limit and config.ctx > limit:
        raise SpectraError(f"--ctx {config.ctx} exceeds the {limit} positions of {config.model}.")


def release_memory(device: torch.device) -> None:
    """Free a model's memory before the next one loads."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_stage(run: Run, stage: Stage) -> dict[str, float]:
    """One stage over this rank's blocks (claimed, resumable; see `run_blocks`); returns this
    process's throughput."""
    window_ids = stage.windows.meta["window_id"].to_numpy()
    tokens = stage.windows.tokens

    def block_shards(block: Block) -> int:
        ids = [int(window_ids[row]) for row in block.rows]
        batch = torch.from_numpy(tokens[block.rows])
        for wid, record in zip(ids, stage.compute(batch, ids), strict=True):
            store.write_shard(run.layout, stage.name, wid, **record)
        return int(tokens[block.rows].size)

    config = run.config
    return run_blocks(
        stage.name, window_ids, config.batch_size, run.layout, run.dist, block_shards,
        config.progress, run.log,
    )  # fmt: skip


def run_experiment(experiment: Experiment, *, log: Log = print) -> Path:
    """Run (or resume, or join) `experiment`; returns the results folder."""
    return run_distributed(experiment.config, lambda dist: _run(experiment, dist, log))


def _run(experiment: Experiment, dist: Dist, log: Log) -> Path:
    config, layout = experiment.config, experiment.layout
    device = models.pick_device(dist.device_for(config.device))
    run = Run(config, layout, dist, device, models.pick_dtype(config.dtype, device), log)
    hf_config = models.load_config(config.model)
    models.check_measurable(hf_config)
    check_context(config, hf_config)
    needed = experiment.disk_bytes(hf_config)
    if run.main:
        store.check_writable(layout.root, needed)
        if store.prepare_folder(layout, config.identity(), config.overwrite):
            done = len(layout.done_windows(experiment.resume_stage))
            log(f"Resuming {layout.root}: {done} windows already done.")
        else:
            store.write_json(layout.config, experiment.record(run))
    dist.barrier()
    experiment.prepare(run, models.load_tokenizer(config.model))
    dist.barrier()
    for stage in experiment.stages(run):
        run.timings[stage.name] = run_stage(run, stage)
        dist.barrier()
        run.collect(stage)
        del stage  # its compute holds the stage's model: let the experiment free it
    if run.main:
        store.write_json(layout.summary, experiment.merge(run).to_json())
        log(f"Results: {layout.root}")
    return layout.root
