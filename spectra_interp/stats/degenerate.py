"""Degenerate heads: ‖q‖ or H constant up to rounding, so no statistic of them means anything.

A head whose ‖q‖ is constant (QK-norm with its norm weights at their initial value of 1: ‖q‖ is
sqrt(head_dim) up to the norm's epsilon for every token) or whose H is constant (every query
splits its attention the same way, e.g. H = 0 when it always attends to one key) has a Pearson r
of NaN or of rounding noise, a Spearman rho that ranks float noise, and temperature shares of any
size. Such a head gets undefined statistics, a reason in the `degenerate` column, and is left
out of the counts, medians, the verdict and the figures.

The test is a robust relative spread over the head's token sample (all windows pooled):

    spread = MAD / |median|      (MAD: the median absolute deviation from the median;
                                  for H, |median| is at least `ENTROPY_SCALE` = 1 nat)

so a head is degenerate when at least half of its tokens lie within `spread_bound(dtype)`·|median|
of the median. The bound is max(`SPREAD_FLOOR`, `SPREAD_EPS` · eps(dtype)): rounding scales with
the dtype of the run (eps: 1.2e-7 in float32, 9.8e-4 in float16, 7.8e-3 in bfloat16), and the
floor (about 128 float32 eps) covers what is not rounding but is still no signal: the norm's
epsilon against a small mean square in a freshly initialised QK-norm model, and H's absolute
rounding (eps times the logits' size) in a head that always attends to one key. The floor was set
between spreads measured in float32 (README: "Degenerate heads"): at most 5.4e-6 in the constant
cases, at least 3.9e-5 in every head of the default SmolLM2 run. The float16 and bfloat16 bounds
follow from eps and were not measured.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float

# A head is degenerate when half its tokens lie within this relative distance of the median...
SPREAD_FLOOR = 1.5e-5
# ... or within this many machine epsilons of the run's dtype, whichever is larger.
SPREAD_EPS = 8
# H's spread is taken against at least this many nats (see `spreads`).
ENTROPY_SCALE = 1.0
CONSTANT_QNORM = "constant ‖q‖"
CONSTANT_H = "constant H"
COLUMN = "degenerate"
EPS = {
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
    "float64": float(np.finfo(np.float64).eps),
}


def spread_bound(dtype: str) -> float:
    """The relative spread at or below which a head's ‖q‖ or H counts as constant."""
    name = str(dtype).removeprefix("torch.")
    if name not in EPS:
        raise ValueError(f"No machine epsilon known for dtype {dtype!r}; use one of {list(EPS)}.")
    return max(SPREAD_FLOOR, SPREAD_EPS * EPS[name])


def relative_spread(
    values: Float[np.ndarray, "window layer head k"], floor: float = 0.0
) -> Float[np.ndarray, "layer head"]:
    """MAD / max(|median|, floor) per head over every window's sampled tokens (0 for a head
    whose values are all equal; inf for a median of 0 with some spread and no floor)."""
    x = np.moveaxis(np.asarray(values, dtype=np.float64), 0, 2)
    x = x.reshape(*x.shape[:2], -1)
    median = np.median(x, axis=-1)
    mad = np.median(np.abs(x - median[..., None]), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mad == 0, 0.0, mad / np.maximum(np.abs(median), floor))


def spreads(
    qnorm: Float[np.ndarray, "window layer head k"],
    entropy: Float[np.ndarray, "window layer head k"],
) -> tuple[Float[np.ndarray, "layer head"], Float[np.ndarray, "layer head"]]:
    """The relative spreads of ‖q‖ (against its median: a norm has no natural unit) and of H
    (against its median, but at least `ENTROPY_SCALE` nats: H's rounding error is absolute, a
    difference of logsumexp and mean logit, so a head whose H is 0 up to rounding is constant)."""
    return relative_spread(qnorm), relative_spread(entropy, ENTROPY_SCALE)


def degenerate_reasons(
    qnorm: Float[np.ndarray, "window layer head k"],
    entropy: Float[np.ndarray, "window layer head k"],
    dtype: str,
) -> np.ndarray:
    """Per head ([layer, head], str): "" for a measurable head, else why not (`CONSTANT_QNORM`,
    `CONSTANT_H`, or both joined by ", ")."""
    bound = spread_bound(dtype)
    spread_q, spread_h = spreads(qnorm, entropy)
    flat_q, flat_h = spread_q <= bound, spread_h <= bound
    reasons = np.full(flat_q.shape, "", dtype=object)
    reasons[flat_q] = CONSTANT_QNORM
    reasons[flat_h] = CONSTANT_H
    reasons[flat_q & flat_h] = f"{CONSTANT_QNORM}, {CONSTANT_H}"
    return reasons


def is_degenerate(table: pd.DataFrame) -> Bool[np.ndarray, " row"]:
    """Per row of a head table, whether the head is degenerate: its `degenerate` column holds a
    reason ("" or NaN, as a CSV reads an empty cell, for a measured head; no column: none)."""
    if COLUMN not in table.columns:
        return np.zeros(len(table), dtype=bool)
    return (table[COLUMN].astype("string").fillna("") != "").to_numpy()


def measurable(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a head table that are not degenerate (all rows of a table without the
    column)."""
    return table[~is_degenerate(table)]


def degenerate_summary(table: pd.DataFrame) -> dict:
    """How many heads were left out as degenerate, and which, with their reasons."""
    flagged = table[is_degenerate(table)]
    return {
        "count": int(len(flagged)),
        "heads": [
            {"layer": int(r["layer"]), "head": int(r["head"]), "reason": str(r[COLUMN])}
            for _, r in flagged.iterrows()
        ],
    }


def control_usability(
    qnorm: Float[np.ndarray, "window layer head k"], dtype: str, *, max_share: float = 0.5
) -> dict:
    """Whether the random-init model can serve as a control for r(‖q‖, H): not when its ‖q‖ is
    constant (by construction, e.g. QK-norm with fresh norm weights of 1) in more than
    `max_share` of its heads."""
    flat = relative_spread(qnorm) <= spread_bound(dtype)
    share = float(flat.mean()) if flat.size else 0.0
    usable = share <= max_share
    reason = None
    if not usable:
        reason = (
            f"its ‖q‖ is constant in {int(flat.sum())} of {flat.size} heads (by construction: "
            "QK-norm with fresh norm weights of 1 gives every query the same norm), so its r "
            "ranks rounding noise; rerun with --random-init-norms to randomise the norm weights"
        )
    return {"usable": usable, "constant_qnorm_heads": int(flat.sum()), "reason": reason}
