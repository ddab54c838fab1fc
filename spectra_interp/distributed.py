"""torch.distributed for the sweep: one process per GPU (NCCL) or CPU worker (gloo) via torchrun.

Without torchrun's environment (RANK, WORLD_SIZE) everything is a single process and no process
group is created. Synchronisation is only barriers: each rank writes its own shards, so no
tensors travel between ranks.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from spectra_interp.atomic import write_bytes_atomic

BARRIER_TIMEOUT_MIN = int(os.environ.get("SPECTRA_DIST_TIMEOUT_MIN", "60"))
# The most any head's pearson_r may differ between runs that differ only in their process or
# thread count (torchrun sets OMP_NUM_THREADS=1 per rank). A window is always computed in the same
# batch, so only a float32 kernel that splits a reduction by thread count (a matmul's blocking,
# an attention kernel's split of the keys) can move its numbers, by a few ulps per ‖q‖ and H
# (relative 1e-7 to 1e-6); r then moves by about that change over the values' relative spread
# (2e-6 / 0.034, SmolLM2's smallest ‖q‖ spread, is 6e-5 at worst, far less on average over
# thousands of tokens). Measured: 0 with the fused kernel of commit 48bd160 (1 to 16 threads,
# 1 or 2 processes); 7.4e-6 reported by issue 23 on another kernel. README: "Several GPUs or
# processes".
PROCESS_R_BOUND = 2e-5


@dataclass
class Dist:
    """This process's place in the run: rank, world size, local rank, owner of the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str = "auto") -> Dist:
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        owns = False
        if not torch_dist.is_initialized():
            if use_cuda:
                torch.cuda.set_device(local)
            torch_dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                timeout=datetime.timedelta(minutes=BARRIER_TIMEOUT_MIN),
            )
            owns = True
        return cls(rank=rank, world_size=world, local_rank=local, owns_group=owns)

    def device_for(self, device: str) -> str:
        """Each rank takes its own GPU: `cuda` / `auto` become `cuda:<local rank>` with CUDA."""
        if self.world_size > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()

    def on_one_host(self) -> bool:
        """True when every rank runs on this machine (and so shares its results folder)."""
        if self.world_size == 1:
            return True
        hosts: list[str | None] = [None] * self.world_size
        torch_dist.all_gather_object(hosts, socket.gethostname())
        return len(set(hosts)) == 1

    def collect_files(self, root: Path, relative: list[str]) -> None:
        """Send the named files (relative to `root`) from every rank to rank 0, which writes
        those it lacks: ranks on other machines keep their shards in their own folders."""
        if self.world_size == 1:
            return
        mine = {name: (root / name).read_bytes() for name in relative if (root / name).exists()}
        gathered: list[dict[str, bytes]] | None = [{}] * self.world_size if self.rank == 0 else None
        torch_dist.gather_object(mine, gathered, dst=0)
        if gathered is not None:
            for files in gathered:
                for name, data in files.items():
                    if not (root / name).exists():
                        write_bytes_atomic(root / name, data)

    def close(self) -> None:
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


T = TypeVar("T")


def is_main_process() -> bool:
    """Whether this process is rank 0 of torchrun (or the only process), from its environment."""
    return int(os.environ.get("RANK", "0")) == 0


def run_distributed(config: Any, body: Callable[[Dist], T]) -> T:
    """Run `body` as this process's part of a run (torchrun's rank, or the only process), and
    always leave the process group."""
    from spectra_interp.errors import SpectraError

    dist = Dist.from_env(config.device)
    if config.device_map and dist.world_size > 1:
        raise SpectraError("--device-map spreads one model over all GPUs; run it without torchrun.")
    try:
        return body(dist)
    finally:
        dist.close()
