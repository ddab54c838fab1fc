"""The budget rules, fitted per head on the calibration documents.

Each rule predicts log k_p, the log of the fewest keys holding mass p of a query's attention (the
sweep's k_eff at mass p):

- `uniform`: log n (every query keeps the same fraction of the n keys it sees);
- `head`: a_h + log n (a per-head fraction);
- `head_position`: a_h + b_h log n;
- `qnorm`: a_h + b_h log n + c_h log‖q‖ (the proposal); `qnorm_shuffled` applies it to ‖q‖
  permuted within the window, head and bin of log n (the control);
- `sink_local`: 0 (the same number of keys for every query, the most recent ones).

Fitted by least squares in log space, from per-window sufficient statistics (sums of log k,
log k · log n, ... at each mass of a grid), so the calibration shards stay small and a rule can be
fitted at any grid mass afterwards. Least squares, not a quantile fit: the per-arm scale that meets
each budget absorbs the level, so only the slopes (how the budget is shared among heads,
positions and queries) matter, and least squares gives them in closed form for every head at
once; head_position and qnorm are fitted the same way either way. Rules are kept per budget:
one mass for all budgets by default, or each budget's own (`BudgetConfig.fit_mass`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.budget.arms import SHUFFLE_STREAM

# Sums over the calibration queries per mass (the target) and per head (the design).
TARGET_COLUMNS = ("share", "y", "y_log_n", "y_log_q", "y2")  # k/n, log k, ... (y = log k)
DESIGN_COLUMNS = ("n", "log_n", "log_q", "log_n2", "log_n_log_q", "log_q2")


@dataclass(frozen=True)
class Rules:
    """Per budget and head: the fitted coefficients and their R² on the calibration queries."""

    fit_mass: Float[np.ndarray, " budget"]
    head: Float[np.ndarray, "budget layer head"]  # a_h
    head_position: Float[np.ndarray, "budget layer head 2"]  # a_h, b_h
    qnorm: Float[np.ndarray, "budget layer head 3"]  # a_h, b_h, c_h
    r2_head: Float[np.ndarray, "budget layer head"]
    r2_head_position: Float[np.ndarray, "budget layer head"]
    r2_qnorm: Float[np.ndarray, "budget layer head"]

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"rules_{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Rules:
        return cls(
            **{k.removeprefix("rules_"): v for k, v in arrays.items() if k.startswith("rules_")}
        )


def log_qnorm(qnorm: np.ndarray) -> np.ndarray:
    """log‖q‖ in float64 (a query of norm 0 would be -inf: floored at a tiny norm)."""
    return np.log(np.maximum(np.asarray(qnorm, dtype=np.float64), 1e-30))


def target_sums(
    counts: Int[Tensor, "*batch q mass"],
    visible: Int[Tensor, "*#batch q"],
    log_q: Float[Tensor, "*batch q"],
) -> Float[Tensor, "*batch mass 5"]:
    """The `TARGET_COLUMNS` summed over queries, for each mass, from each query's k_p."""
    y = counts.double().log()
    log_n = visible.double().log()[..., None]
    share = counts.double() / visible.double()[..., None]
    columns = (share, y, y * log_n, y * log_q.double()[..., None], y * y)
    return torch.stack([c.sum(-2) for c in columns], dim=-1)


def design_sums(
    log_n: Float[np.ndarray, "layer q"], log_q: Float[np.ndarray, "*batch layer head q"]
) -> Float[np.ndarray, "layer head 6"]:
    """The `DESIGN_COLUMNS` summed over windows and queries, per head."""
    q = np.asarray(log_q, dtype=np.float64).reshape(-1, *np.shape(log_q)[-3:])
    n = np.broadcast_to(np.asarray(log_n, dtype=np.float64)[None, :, None], q.shape)
    columns = (np.ones_like(q), n, q, n * n, n * q, q * q)
    return np.stack([c.sum(axis=(0, 3)) for c in columns], axis=-1)


def _solve(xtx: np.ndarray, xty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coefficients from normal equations (pseudo-inverse: a column constant within
    a head, e.g. log n on a saturated sliding layer, gets the minimum-norm share) and the
    residual sum of squares without its Σy² term."""
    beta = np.einsum("lhij,lhj->lhi", np.linalg.pinv(xtx), xty)
    partial = -2 * np.einsum("lhi,lhi->lh", beta, xty) + np.einsum(
        "lhi,lhij,lhj->lh", beta, xtx, beta
    )
    return beta, partial


def rules_from_sums(
    design: Float[np.ndarray, "layer head 6"],
    target: Float[np.ndarray, "layer head mass 5"],
    masses: tuple[float, ...],
    chosen: list[int],
) -> Rules:
    """Every rule for every budget, budget j fitted at mass `masses[chosen[j]]`."""
    n, sn, sq, snn, snq, sqq = np.moveaxis(np.asarray(design, dtype=np.float64), -1, 0)
    xtx = np.stack([np.stack(r, -1) for r in ((n, sn, sq), (sn, snn, snq), (sq, snq, sqq))], -2)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("head", "hp", "qn", "r2h", "r2hp", "r2qn")}
    with np.errstate(invalid="ignore", divide="ignore"):
        for m in chosen:
            _, sy, syn, syq, syy = np.moveaxis(target[:, :, m], -1, 0)
            total = syy - sy * sy / n
            qn, sse_qn = _solve(xtx, np.stack([sy, syn, syq], -1))
            hp, sse_hp = _solve(xtx[..., :2, :2], np.stack([sy, syn], -1))
            head = (sy - sn) / n
            sse_head = syy - 2 * syn + snn - n * head * head
            out["head"].append(head)
            out["hp"].append(hp)
            out["qn"].append(qn)
            for key, sse in (("r2h", sse_head), ("r2hp", syy + sse_hp), ("r2qn", syy + sse_qn)):
                out[key].append(np.where(total > 0, 1 - sse / total, np.nan))
    return Rules(
        fit_mass=np.array([masses[m] for m in chosen]),
        head=np.stack(out["head"]),
        head_position=np.stack(out["hp"]),
        qnorm=np.stack(out["qn"]),
        r2_head=np.stack(out["r2h"]),
        r2_head_position=np.stack(out["r2hp"]),
        r2_qnorm=np.stack(out["r2qn"]),
    )


def fit_rules(
    log_k: Float[np.ndarray, "window layer head q"],
    log_n: Float[np.ndarray, "layer q"],
    log_q: Float[np.ndarray, "window layer head q"],
    mass: float = float("nan"),
) -> Rules:
    """Every rule fitted to one target (log k_p of each calibration query, evaluated positions
    only), as a single budget."""
    counts = torch.from_numpy(np.exp(np.asarray(log_k, dtype=np.float64)))[..., None]
    visible = torch.from_numpy(np.exp(np.asarray(log_n, dtype=np.float64)))[:, None]
    target = sum(
        target_sums(counts[w], visible, torch.from_numpy(np.asarray(log_q[w])))
        for w in range(len(counts))
    )
    return rules_from_sums(design_sums(log_n, log_q), target.numpy(), (mass,), [0])


def coefficients(arm: str, rules: Rules, budget: int) -> Float[np.ndarray, "layer head 3"]:
    """An arm's rule at budget index `budget` as (intercept, slope on log keys seen, slope on
    log‖q‖) per head."""
    shape = rules.head.shape[1:]
    zero, one = np.zeros(shape), np.ones(shape)
    if arm == "uniform":
        return np.stack([zero, one, zero], axis=-1)
    if arm == "head":
        return np.stack([rules.head[budget], one, zero], axis=-1)
    if arm == "head_position":
        return np.concatenate([rules.head_position[budget], zero[..., None]], axis=-1)
    if arm in ("qnorm", "qnorm_shuffled"):
        return rules.qnorm[budget]
    if arm == "sink_local":
        return np.zeros((*shape, 3))
    raise ValueError(f"arm {arm!r} has no rule")


def fit_r2(arm: str, rules: Rules, budget: int) -> Float[np.ndarray, "layer head"]:
    """R² of an arm's fitted rule on the calibration queries (NaN for the unfitted arms)."""
    fitted = {
        "head": rules.r2_head,
        "head_position": rules.r2_head_position,
        "qnorm": rules.r2_qnorm,
        "qnorm_shuffled": rules.r2_qnorm,
    }
    return fitted[arm][budget] if arm in fitted else np.full(rules.head.shape[1:], np.nan)


def predict(
    arm: str,
    rules: Rules,
    log_n: Float[np.ndarray, "layer pos"],
    log_q: Float[np.ndarray, "*batch layer head pos"],
    budget: int,
) -> Float[np.ndarray, "*batch layer head pos"]:
    """An arm's rule: the log of the keys it wants per query, before its scale. `log_q` is the
    shuffled ‖q‖ for `qnorm_shuffled`."""
    c = coefficients(arm, rules, budget)
    n = np.asarray(log_n, dtype=np.float64)[:, None, :]
    q = np.asarray(log_q, dtype=np.float64)
    return c[..., 0, None] + c[..., 1, None] * n + c[..., 2, None] * q


def position_bins(
    log_n: Float[np.ndarray, "layer pos"], n_bins: int
) -> Int[np.ndarray, "layer pos"]:
    """Equal-width bins of log(keys seen) per layer, over the positions given."""
    log_n = np.asarray(log_n, dtype=np.float64)
    lo, hi = log_n.min(axis=1, keepdims=True), log_n.max(axis=1, keepdims=True)
    width = np.where(hi > lo, (hi - lo) / n_bins, 1.0)
    return np.clip(((log_n - lo) / width).astype(np.int64), 0, n_bins - 1)


def shuffle_within_bins(
    log_q: Float[np.ndarray, "layer head pos"],
    bins: Int[np.ndarray, "layer pos"],
    seed: int,
    window_id: int,
) -> Float[np.ndarray, "layer head pos"]:
    """One window's ‖q‖ permuted among the queries of the same layer, head and position bin
    (each head its own permutation): the information a single query's ‖q‖ carries is gone, its
    distribution per head and position, and the window's level, are kept."""
    rng = np.random.default_rng((seed, SHUFFLE_STREAM, window_id))
    out = np.array(log_q, dtype=np.float64, copy=True)
    for layer in range(out.shape[0]):
        for b in np.unique(bins[layer]):
            cols = np.flatnonzero(bins[layer] == b)
            out[layer][:, cols] = rng.permuted(out[layer][:, cols], axis=1)
    return out
