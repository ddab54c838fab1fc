"""The arms of Phase 2 and how each becomes a number of keys per query (pure).

Every arm but the oracle gives each evaluated query a desired number of keys d = s · exp(pred),
with pred its rule in log space (`rules.predict`) and s one scale per arm and budget. d is rounded
with a fixed dither, k = floor(d + u) with u uniform in [0, 1) per query and drawn from the seed,
so the mean budget moves in steps of one key of one query as s grows, and clamped between the
keys every arm keeps (the sink and the local window, at least one) and the keys visible. The
scale is solved by bisection on the dense pass of the evaluation windows, so each arm meets its
budget there without repeated forwards. The oracle instead keeps the smallest set holding mass p
(the always-kept keys counted first), with p read off a grid of masses.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.errors import SpectraError

ARMS = (
    "uniform",
    "head",
    "head_position",
    "qnorm",
    "qnorm_shuffled",
    "oracle_top_p",
    "sink_local",
)
DENSE = "dense"
PROPOSAL, RIVAL, CONTROL, BOUND = "qnorm", "head_position", "qnorm_shuffled", "oracle_top_p"
# Arms that keep the most recent keys instead of the highest-scoring ones.
RECENCY_ARMS = frozenset({"sink_local"})
# The masses the oracle's p is chosen from: even in logit(p), dense near 1, then p = 1 (dense).
ORACLE_GRID = tuple(
    float(v) for v in 1 / (1 + np.exp(-np.linspace(math.log(0.02 / 0.98), math.log(1e6 - 1), 255)))
) + (1.0,)
# Streams of the seed: the rounding dither and the qnorm_shuffled permutation.
DITHER_STREAM, SHUFFLE_STREAM = 1, 2
BISECTION_STEPS = 64
BISECTION_PRECISION = 1e-4  # a budget met this closely needs no more steps
BISECTION_WIDTH = 1e-7  # nor one whose log scale is known this well


def always_kept_count(
    visible: Int[Tensor, "layer pos"], sink: int, local: int
) -> Int[Tensor, "layer pos"]:
    """How many visible keys every arm keeps: the first `sink` tokens of the window and the `local`
    most recent keys (the query's own included), counted once where they overlap."""
    t = torch.arange(visible.shape[-1], dtype=torch.int64)
    lo = t - visible + 1  # the first visible key
    n_sink = (torch.clamp(torch.full_like(t, sink), max=t + 1) - lo).clamp(min=0)
    n_local = visible.clamp(max=local)
    overlap = torch.minimum(torch.full_like(t, sink - 1), t) - torch.maximum(lo, t - local + 1)
    return n_sink + n_local - (overlap + 1).clamp(min=0)


def fewest_keys(
    visible: Int[Tensor, "layer pos"], sink: int, local: int
) -> Int[Tensor, "layer pos"]:
    """The fewest keys a query may keep: the always-kept ones, and at least one."""
    return always_kept_count(visible, sink, local).clamp(min=1)


def floor_budget(
    visible: Int[Tensor, "layer pos"], fewest: Int[Tensor, "layer pos"], skip_first: int
) -> float:
    """The mean fraction of visible keys the always-kept keys already take (the lowest budget)."""
    return float((fewest[:, skip_first:] / visible[:, skip_first:]).double().mean())


def check_budgets(budgets: tuple[float, ...], floor: float, sink: int, local: int) -> None:
    """Refuse, in one sentence, a budget below what the always-kept keys already take."""
    low = [b for b in budgets if b < floor]
    if low:
        raise SpectraError(
            f"--budgets {min(low)} is below {floor:.3f}, the mean share of visible keys that the "
            f"always-kept keys (--sink {sink}, --recent {local}) already take; ask for at least "
            f"{math.ceil(floor * 1000) / 1000:.3f} or keep fewer keys."
        )


def dither(seed: int, window_id: int, shape: tuple[int, ...]) -> Float[Tensor, "..."]:
    """The fixed rounding offsets u in [0, 1) of one window's queries."""
    rng = np.random.default_rng((seed, DITHER_STREAM, window_id))
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
