"""Stages of claimed per-window shards: fixed blocks of windows, dealt to torchrun ranks, each
claimed before it is computed and skipped once its shards exist (resume and sharing).

Windows are processed in fixed blocks of `batch_size` (block k holds windows k*B .. k*B+B-1),
so a resumed, shared or distributed run computes every window in the same batch as an
uninterrupted one and the final numbers are identical. Under torchrun, blocks are dealt to ranks
round-robin; each rank writes its own shards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Int
from tqdm.auto import tqdm

from spectra_interp.distributed import Dist
from spectra_interp.results import store
from spectra_interp.results.layout import Layout

CLAIM_POLL_S = 2.0
Log = Callable[[str], Any]


@dataclass(frozen=True)
class Block:
    """A fixed group of window indices (rows of the token array) run as one batch."""

    index: int
    rows: Int[np.ndarray, " row"]


def blocks(n_windows: int, batch_size: int) -> list[Block]:
    """Every block of a stage of `n_windows` windows, in order."""
    return [
        Block(i, np.arange(s, min(s + batch_size, n_windows)))
        for i, s in enumerate(range(0, n_windows, batch_size))
    ]


def rank_blocks(n_windows: int, batch_size: int, dist: Dist) -> list[Block]:
    """The blocks this rank computes (all of them in a single process)."""
    return [b for b in blocks(n_windows, batch_size) if b.index % dist.world_size == dist.rank]


def own_shards(
    window_ids: np.ndarray, stages: list[str], batch_size: int, layout: Layout, dist: Dist
) -> list[str]:
    """This rank's shard files of `stages`, relative to the results folder (what ranks on other
    machines send to rank 0)."""
    mine = rank_blocks(len(window_ids), batch_size, dist)
    return [
        layout.relative_shard(stage, int(window_ids[row]))
        for stage in stages
        for block in mine
        for row in block.rows
    ]


def run_blocks(
    stage: str,
    window_ids: np.ndarray,
    batch_size: int,
    layout: Layout,
    dist: Dist,
    compute: Callable[[Block], int],
    progress: bool,
    log: Log,
) -> dict[str, float]:
    """Compute every block of this rank whose windows have no `stage` shard yet, claiming each
    block first and waiting for blocks another live run holds. `compute(block)` writes the
    block's shards and returns the tokens it read. Returns this process's throughput
    (`windows`, `tokens`, `seconds`)."""

    def done(block: Block) -> bool:
        return set(window_ids[block.rows].tolist()) <= layout.done_windows(stage)

    todo = [b for b in rank_blocks(len(window_ids), batch_size, dist) if not done(b)]
    total = sum(len(b.rows) for b in todo)
    bar = tqdm(
        total=total,
        desc=f"{stage} windows",
        unit="win",
        disable=not progress or dist.rank != 0,
    )
    computed, tokens_done, seconds, waited = 0, 0, 0.0, False
    while todo:
        for block in todo:
            claim = layout.claim(stage, block.index)
            if done(block) or not store.try_claim(claim):
                continue
            try:
                if not done(block):
                    start = time.perf_counter()
                    tokens_done += compute(block)
                    seconds += time.perf_counter() - start
                    computed += len(block.rows)
                    bar.update(len(block.rows))
            finally:
                store.release_claim(claim)
            bar.set_postfix(tok_s=f"{tokens_done / max(seconds, 1e-9):,.0f}")
        todo = [b for b in todo if not done(b)]
        bar.update(total - sum(len(b.rows) for b in todo) - bar.n)
        if todo:
            if not waited:
                log(
                    f"{layout.root} is shared with another run: waiting for the {stage} windows "
                    "it is computing (its shards will be used here too)."
                )
                waited = True
            time.sleep(CLAIM_POLL_S)
    bar.close()
    if total:
        shared = f"; {total - computed} by another run" if computed < total else ""
        log(f"{stage}: {computed} windows computed here{shared}.")
    return {"windows": computed, "tokens": tokens_done, "seconds": round(seconds, 3)}
