"""The arms of Phase 2, held in one registry (`REGISTRY`), and how counts become budgets (pure).

Every arm chooses *which* keys by exact top-k on the true scores (the always-kept keys first);
arms differ in *how many*:

- `dense`: every visible key (the reference);
- the fitted arms (`keys="cells"`): nested partitions of the queries into cells (`cells`: none,
  the head, the bin of log keys seen, the bin of a per-query feature's residual), each cell given
  a kept fraction by the one loss-optimal allocator (`allocate`); within a cell every query keeps
  that fraction of its visible keys, rounded with a fixed dither k = floor(f·n + u);
- `sink_local` (StreamingLLM): the same number of the most recent keys for every query, its scale
  solved by bisection;
- `oracle_top_p` and `estimated_top_p`: the fewest keys holding mass p of the query's attention,
  computed on the true keys (the bound) or on keys quantised to `estimate_bits` bits per channel
  (what an engine can afford, as in Twilight and Quest), p read off a grid of masses.

Budgets are met on the dense pass of the evaluation windows without repeated forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.errors import SpectraError

# How an arm sets each query's count of keys.
DENSE_KEYS, CELL_KEYS, RECENCY_KEYS, TOP_P_KEYS = "dense", "cells", "recency", "top_p"
# The levels a fitted arm's cells split on, coarse to fine (each arm's cells nest in the next's).
HEAD, POSITION, FEATURE = "head", "position", "feature"
# The per-query features a cell may split on.
QNORM, ENTROPY = "qnorm", "entropy"


@dataclass(frozen=True)
class Arm:
    """One arm: its role in the comparison, how it sets counts, its cells and its colour."""

    name: str
    role: str
    keys: str
    cells: tuple[str, ...] = ()
    feature: str | None = None
    shuffled: bool = False  # the feature's residual permuted within its head-and-position cell
    estimate_bits: int | None = None  # top-p counted on keys quantised to this many bits
    colour: str = "#7f7f7f"
    dash: str = "solid"

    @property
    def fitted(self) -> bool:
        return self.keys == CELL_KEYS


REGISTRY: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("dense", "reference", DENSE_KEYS, colour="#000000"),
        Arm("uniform", "baseline: one fraction for every query", CELL_KEYS, colour="#7f7f7f"),
        Arm("head", "baseline: a fraction per head (Ada-KV)", CELL_KEYS, (HEAD,), colour="#8c564b"),
        Arm(
            "head_position", "rival: per head and bin of log keys seen", CELL_KEYS,
            (HEAD, POSITION), colour="#1f77b4",
        ),
        Arm(
            "qnorm", "proposal: head_position split by the ‖q‖ residual", CELL_KEYS,
            (HEAD, POSITION, FEATURE), QNORM, colour="#d62728",
        ),
        Arm(
            "qnorm_shuffled", "control: qnorm with the residual permuted within its cell",
            CELL_KEYS, (HEAD, POSITION, FEATURE), QNORM, shuffled=True, colour="#ff9896",
            dash="dash",
        ),
        Arm(
            "entropy", "ceiling: head_position split by the query's true entropy", CELL_KEYS,
            (HEAD, POSITION, FEATURE), ENTROPY, colour="#e377c2", dash="dot",
        ),
        Arm("sink_local", "StreamingLLM: sink and recent keys", RECENCY_KEYS, colour="#9467bd",
            dash="dashdot"),
        Arm("oracle_top_p", "bound: exact top-p", TOP_P_KEYS, colour="#2ca02c", dash="dot"),
        Arm(
            "estimated_top_p", "query-aware rival: top-p on 4-bit keys", TOP_P_KEYS,
            estimate_bits=4, colour="#17becf", dash="dashdot",
        ),
    )
}  # fmt: skip
DENSE = "dense"
# Every arm but the dense reference, in shard order.
ARMS = tuple(name for name, arm in REGISTRY.items() if arm.keys != DENSE_KEYS)
FITTED = tuple(name for name in ARMS if REGISTRY[name].fitted)
TOP_P = tuple(name for name in ARMS if REGISTRY[name].keys == TOP_P_KEYS)
PROPOSAL, RIVAL, CONTROL, BOUND, CEILING = (
    "qnorm", "head_position", "qnorm_shuffled", "oracle_top_p", "entropy",
)  # fmt: skip
ESTIMATED = "estimated_top_p"
# The masses the top-p arms' p is chosen from: even in logit(p), dense near 1, then p = 1 (dense).
ORACLE_GRID = tuple(
    float(v) for v in 1 / (1 + np.exp(-np.linspace(math.log(0.02 / 0.98), math.log(1e6 - 1), 255)))
) + (1.0,)
# Streams of the seed: the rounding dither, the shuffled control, the split cell's coin.
DITHER_STREAM, SHUFFLE_STREAM, COIN_STREAM = 1, 2, 3
BISECTION_STEPS = 64
BISECTION_PRECISION = 1e-4  # a budget met this closely needs no more steps
BISECTION_WIDTH = 1e-7  # nor one whose log scale is known this well


def always_kept_count(
    visible: Int[Tensor, "layer pos"], sink: int, recent: int
) -> Int[Tensor, "layer pos"]:
    """How many visible keys every arm keeps: the first `sink` tokens of the window and the `recent`
    most recent keys (the query's own included), counted once where they overlap."""
    t = torch.arange(visible.shape[-1], dtype=torch.int64)
    lo = t - visible + 1  # the first visible key
    n_sink = (torch.clamp(torch.full_like(t, sink), max=t + 1) - lo).clamp(min=0)
    n_recent = visible.clamp(max=recent)
    overlap = torch.minimum(torch.full_like(t, sink - 1), t) - torch.maximum(lo, t - recent + 1)
    return n_sink + n_recent - (overlap + 1).clamp(min=0)


def fewest_keys(
    visible: Int[Tensor, "layer pos"], sink: int, recent: int
) -> Int[Tensor, "layer pos"]:
    """The fewest keys a query may keep: the always-kept ones, and at least one."""
    return always_kept_count(visible, sink, recent).clamp(min=1)


def floor_budget(
    visible: Int[Tensor, "layer pos"], fewest: Int[Tensor, "layer pos"], skip_first: int
) -> float:
    """The mean fraction of visible keys the always-kept keys already take (the lowest budget)."""
    return float((fewest[:, skip_first:] / visible[:, skip_first:]).double().mean())


def check_budgets(budgets: tuple[float, ...], floor: float, sink: int, recent: int) -> None:
    """Refuse, in one sentence, a budget below what the always-kept keys already take."""
    low = [b for b in budgets if b < floor]
    if low:
        raise SpectraError(
            f"--budgets {min(low)} is below {floor:.3f}, the mean share of visible keys that the "
            f"always-kept keys (--sink {sink}, --recent {recent}) already take; ask for at least "
            f"{math.ceil(floor * 1000) / 1000:.3f} or keep fewer keys."
        )


def dither(
    seed: int, window_id: int, shape: tuple[int, ...], stream: int = DITHER_STREAM
) -> Float[Tensor, "..."]:
    """The fixed rounding offsets u in [0, 1) of one window's queries (or another stream's
    uniform draws: the split cell's coin)."""
    rng = np.random.default_rng((seed, stream, window_id))
    return torch.from_numpy(rng.random(shape))


def keep_counts(
    pred: Float[Tensor, "*batch layer head pos"],
    log_scale: float,
    u: Float[Tensor, "*batch layer head pos"],
    fewest: Int[Tensor, "layer pos"],
    visible: Int[Tensor, "layer pos"],
) -> Int[Tensor, "*batch layer head pos"]:
    """k = floor(exp(pred + log s) + u), clamped to [fewest, visible]; log s = inf keeps all."""
    desired = torch.exp(pred.double() + log_scale)
    k = torch.floor(desired + u)
    k = torch.maximum(k, fewest[:, None].double())
    return torch.minimum(k, visible[:, None].double()).long()


def mean_fraction(
    counts: Int[Tensor, "*batch layer head pos"], visible: Int[Tensor, "layer pos"]
) -> float:
    """The budget as defined: the mean of kept / visible over queries and query heads."""
    return float((counts.double() / visible[:, None].double()).mean())


def solve_log_scale(
    pred: Float[Tensor, "*batch layer head pos"],
    u: Float[Tensor, "*batch layer head pos"],
    fewest: Int[Tensor, "layer pos"],
    visible: Int[Tensor, "layer pos"],
    target: float,
) -> tuple[float, float]:
    """A log scale whose mean budget is within `BISECTION_PRECISION` of `target` (or the nearest
    the steps found), by bisection (the mean only grows with the scale), and that mean. Every
    tensor holds the evaluated positions only."""

    def achieved(log_scale: float) -> float:
        return mean_fraction(keep_counts(pred, log_scale, u, fewest, visible), visible)

    if target >= 1:
        return math.inf, achieved(math.inf)
    lo = float((torch.log(fewest.double())[:, None] - pred).min()) - 1.0
    hi = float((torch.log(visible.double() + 1)[:, None] - pred).max()) + 1.0
    best = (lo, achieved(lo))
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        got = achieved(mid)
        if abs(got - target) < abs(best[1] - target):
            best = (mid, got)
        if abs(got - target) <= BISECTION_PRECISION or hi - lo < BISECTION_WIDTH:
            break
        lo, hi = (mid, hi) if got < target else (lo, mid)
    return best


def nearest_mass(share: Float[np.ndarray, " mass"], target: float) -> int:
    """The index of the mass whose mean share of visible keys is nearest `target`."""
    return int(np.argmin(np.abs(np.asarray(share) - target)))


def oracle_mass(grid_fraction: Float[np.ndarray, " mass"], target: float) -> tuple[float, float]:
    """The grid mass whose mean budget is nearest `target` (1: dense), and that mean."""
    if target >= 1:
        return 1.0, float(grid_fraction[-1])
    best = nearest_mass(grid_fraction, target)
    return ORACLE_GRID[best], float(grid_fraction[best])
