"""From the masked shards to the results: budget curves, per-head budgets and the verdict (pure).

Inference takes documents as the independent units: every window is summed into its document
first. KL intervals are percentile intervals of a document bootstrap (`stats.inference`). The
paired test of qnorm against head_position uses the same documents for both arms: the statistic
is the difference of their mean KLs, its standard error the delete-one-document jackknife (CV3),
and t is referred to Student t on (documents - 1) degrees of freedom, one-sided (qnorm lower).
With few documents the jackknife is the conservative choice (see `jackknife_p_value`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float
from scipy import stats as sps

from spectra_interp.budget.arms import ARMS, BOUND, CONTROL, DENSE, PROPOSAL, RIVAL
from spectra_interp.budget.rules import Rules, coefficients, fit_r2
from spectra_interp.config import BUDGET_TOLERANCE
from spectra_interp.stats.clusters import Clusters
from spectra_interp.stats.inference import bootstrap_ci, jackknife, jackknife_se

# The columns of budget_curves.csv and per_head.csv with their meanings (the README's tables).
CURVE_COLUMNS: dict[str, str] = {
    "arm": "the arm (how each query's keys are chosen)",
    "budget": "its target mean fraction of visible keys (dense: 1)",
    "keys_frac": "the achieved mean fraction of visible keys kept per query head",
    "kv_union_frac": "mean fraction of visible keys read per KV head (union over its GQA group)",
    "kl_mean": "mean next-token KL(dense ‖ arm), nats",
    "kl_ci_low": "lower end of its 95% document-bootstrap interval",
    "kl_ci_high": "upper end of its 95% document-bootstrap interval",
    "kl_p99": "the 99th percentile of per-token KL",
    "ppl": "perplexity of the true next tokens",
    "ppl_delta_pct": "its change from dense, %",
    "top1_agree": "share of tokens whose most likely next token is the dense model's",
    "n_tokens": "evaluated tokens",
    "n_documents": "evaluation documents",
}
PER_HEAD_COLUMNS: dict[str, str] = {
    "arm": "the arm",
    "budget": "its target budget",
    "layer": "layer",
    "head": "query head",
    "kv_head": "the KV head it reads",
    "keys_frac": "that head's mean fraction of visible keys kept",
    "share": "its fraction over the arm's mean (the head's share of the budget)",
    "log_scale": "the arm's scale at this budget, log",
    "intercept": "the rule: desired keys = exp(log_scale + intercept",
    "slope_log_keys": "+ slope_log_keys · log(keys seen)",
    "slope_log_qnorm": "+ slope_log_qnorm · log‖q‖)",
    "fit_r2": "R² of the rule's fit of log k_eff on the calibration queries",
}


KL_QUANTILE = 0.99


def combos(budgets: tuple[float, ...]) -> list[tuple[str, float]]:
    """Every (arm, budget) of a run in shard order: dense once at 1, then each arm by budget."""
    return [(DENSE, 1.0)] + [(arm, float(b)) for arm in ARMS for b in sorted(budgets)]


@dataclass(frozen=True)
class Masked:
    """The masked shards of every evaluation window, stacked in window order."""

    kl: Float[np.ndarray, "window combo token"]
    nll: Float[np.ndarray, "window combo token"]
    top1: Bool[np.ndarray, "window combo token"]
    kept: Float[np.ndarray, "window combo layer head"]  # sum over queries of kept / visible
    union: Float[np.ndarray, "window combo"]  # sum over (layer, KV head, query) of union / visible
    moved: Float[np.ndarray, "window 2"]  # qnorm with ‖q‖ of the masked pass: sum |dk|/n, k/n
    n_queries: int  # evaluated queries per (window, layer, head)
    n_kv_heads: int


def curve_table(
    masked: Masked,
    budgets: tuple[float, ...],
    clusters: Clusters,
    *,
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """budget_curves.csv: one row per (arm, budget), the dense reference first."""
    n_windows, n_combos, n_tokens = masked.kl.shape
    _, _, n_layers, n_heads = masked.kept.shape
    sums = np.stack(
        [
            masked.kl.sum(-1, dtype=np.float64),
            np.full((n_windows, n_combos), float(n_tokens)),
        ],
        axis=-1,
    )
    per_doc = clusters.sum(sums)
    low, high = bootstrap_ci(per_doc, lambda s: s[..., 0] / s[..., 1], n_boot=n_boot, seed=seed)
    total_tokens = n_windows * n_tokens
    ppl = np.exp(masked.nll.sum(axis=(0, 2), dtype=np.float64) / total_tokens)
    keys = masked.kept.sum(axis=(0, 2, 3)) / (n_windows * n_layers * n_heads * masked.n_queries)
    union = masked.union.sum(0) / (n_windows * n_layers * masked.n_kv_heads * masked.n_queries)
    rows = []
    for c, (arm, budget) in enumerate(combos(budgets)):
        rows.append(
            {
                "arm": arm,
                "budget": budget,
                "keys_frac": keys[c],
                "kv_union_frac": union[c],
                "kl_mean": per_doc[:, c, 0].sum() / per_doc[:, c, 1].sum(),
                "kl_ci_low": low[c],
                "kl_ci_high": high[c],
                "kl_p99": float(np.quantile(masked.kl[:, c], KL_QUANTILE)),
                "ppl": ppl[c],
                "ppl_delta_pct": 100 * (ppl[c] / ppl[0] - 1),
                "top1_agree": masked.top1[:, c].mean(),
                "n_tokens": total_tokens,
                "n_documents": per_doc.shape[0],
            }
        )
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def paired_test(
    kl_a: Float[np.ndarray, " cluster"],
    kl_b: Float[np.ndarray, " cluster"],
    n: Float[np.ndarray, " cluster"],
) -> dict[str, float]:
    """Mean KL of arm a minus arm b (same tokens), its jackknife SE, t on (clusters - 1) df and
    the one-sided p of a < b. NaN p with fewer than 3 clusters."""
    stats = np.stack([kl_a, kl_b, n], axis=-1).astype(np.float64)
    diff, loo = jackknife(stats, lambda s: (s[..., 0] - s[..., 1]) / s[..., 2])
    g = stats.shape[0]
    out = {"kl_diff": float(diff), "se": np.nan, "t": np.nan, "df": g - 1, "p_one_sided": np.nan}
    if g >= 3:
        se = float(jackknife_se(loo))
        out["se"] = se
        if se > 0:
            out["t"] = float(diff) / se
            out["p_one_sided"] = float(sps.t.cdf(out["t"], g - 1))
        else:
            out["p_one_sided"] = 0.0 if diff < 0 else 1.0
    return out


def gap_closed(
    kl_arm: np.ndarray,
    kl_rival: np.ndarray,
    kl_bound: np.ndarray,
    n: np.ndarray,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    """The share of the KL gap from the rival to the bound that an arm closes, with a document
    bootstrap interval: (KL_rival - KL_arm) / (KL_rival - KL_bound)."""
    stats = np.stack([kl_arm, kl_rival, kl_bound, n], axis=-1).astype(np.float64)

    def share(s: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s[..., 1] - s[..., 0]) / (s[..., 1] - s[..., 2])

    low, high = bootstrap_ci(stats, share, n_boot=n_boot, seed=seed)
    point = share(stats.sum(0))
    return {"share": _finite(point), "ci_low": _finite(low), "ci_high": _finite(high)}


def _finite(value: np.ndarray | float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def compare(
    masked: Masked,
    budgets: tuple[float, ...],
    clusters: Clusters,
    *,
    alpha: float,
    n_boot: int,
    seed: int,
) -> list[dict]:
    """Per budget: qnorm against head_position (paired test), the gap to the oracle closed by
    qnorm and by the shuffled control, and qnorm against the control."""
    kl = clusters.sum(masked.kl.sum(-1, dtype=np.float64))
    n = clusters.sum(np.full(len(clusters.ids), float(masked.kl.shape[-1])))
    index = {combo: c for c, combo in enumerate(combos(budgets))}
    out = []
    for b in sorted(budgets):
        arm, rival, bound, control = (
            kl[:, index[(a, float(b))]] for a in (PROPOSAL, RIVAL, BOUND, CONTROL)
        )
        test = paired_test(arm, rival, n)
        beats = bool(
            test["kl_diff"] < 0 and np.isfinite(test["p_one_sided"]) and test["p_one_sided"] < alpha
        )
        out.append(
            {
                "budget": float(b),
                f"{PROPOSAL}_vs_{RIVAL}": {**test, "beats": beats},
                f"{PROPOSAL}_gap_closed": gap_closed(
                    arm, rival, bound, n, n_boot=n_boot, seed=seed
                ),
                f"{CONTROL}_vs_{RIVAL}": paired_test(control, rival, n),
                f"{CONTROL}_gap_closed": gap_closed(
                    control, rival, bound, n, n_boot=n_boot, seed=seed
                ),
                f"{PROPOSAL}_vs_{CONTROL}": paired_test(arm, control, n),
            }
        )
    return out


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def verdict_text(comparisons: list[dict], n_documents: int, alpha: float) -> str:
    """The finding in one sentence, whichever way it went."""
    key = f"{PROPOSAL}_vs_{RIVAL}"
    won = [c["budget"] for c in comparisons if c[key]["beats"]]
    budgets = ", ".join(f"{c['budget']:g}" for c in comparisons)
    closed = ", ".join(_percent(c[f"{PROPOSAL}_gap_closed"]["share"]) for c in comparisons)
    control = ", ".join(_percent(c[f"{CONTROL}_gap_closed"]["share"]) for c in comparisons)
    test = f"one-sided paired jackknife over {n_documents} evaluation documents, p < {alpha:g}"
    if won:
        head = (
            f"{PROPOSAL} beats {RIVAL} at {len(won)} of {len(comparisons)} budgets "
            f"({', '.join(f'{b:g}' for b in won)}; {test})"
        )
    else:
        head = (
            f"{PROPOSAL} does not beat {RIVAL} at any budget ({budgets}; {test}): ‖q‖ does not "
            "set key budgets better than the head and the position here"
        )
    return (
        f"{head}; at budgets {budgets} it closes {closed} of the KL gap from {RIVAL} to "
        f"{BOUND}, and the {CONTROL} control closes {control}."
    )


def budget_report(
    curves: pd.DataFrame, planned: Float[np.ndarray, "arm budget"], budgets: tuple[float, ...]
) -> dict:
    """How each arm met its budgets: target, planned on the dense pass, achieved when masked."""
    rows = []
    for a, arm in enumerate(ARMS):
        for j, b in enumerate(sorted(budgets)):
            got = curves[(curves["arm"] == arm) & (curves["budget"] == b)]["keys_frac"].iloc[0]
            rows.append(
                {
                    "arm": arm,
                    "budget": float(b),
                    "planned": float(planned[a, j]),
                    "achieved": float(got),
                }
            )
    worst = max(abs(r["achieved"] - r["budget"]) for r in rows)
    return {
        "tolerance": BUDGET_TOLERANCE,
        "met": bool(worst <= BUDGET_TOLERANCE),
        "worst_abs_error": worst,
        "arms": rows,
    }


def per_head_table(
    masked: Masked,
    budgets: tuple[float, ...],
    rules: Rules,
    log_scales: Float[np.ndarray, "arm budget"],
) -> pd.DataFrame:
    """per_head.csv: each arm's rule per head and the share of the budget each head got."""
    n_windows = masked.kept.shape[0]
    n_layers, n_heads = masked.kept.shape[2:]
    per_head = masked.kept.sum(0) / (n_windows * masked.n_queries)  # [combo, layer, head]
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    kv_head = head // (n_heads // masked.n_kv_heads)
    frames = []
    for c, (arm, budget) in enumerate(combos(budgets)):
        if arm == DENSE:
            continue
        a, j = ARMS.index(arm), sorted(budgets).index(budget)
        fitted = arm != BOUND
        coef = coefficients(arm, rules, j) if fitted else np.full((n_layers, n_heads, 3), np.nan)
        frac = per_head[c]
        frames.append(
            pd.DataFrame(
                {
                    "arm": arm,
                    "budget": budget,
                    "layer": layer.ravel(),
                    "head": head.ravel(),
                    "kv_head": kv_head.ravel(),
                    "keys_frac": frac.ravel(),
                    "share": (frac / frac.mean()).ravel(),
                    "log_scale": log_scales[a, j] if fitted else np.nan,
                    "intercept": coef[..., 0].ravel(),
                    "slope_log_keys": coef[..., 1].ravel(),
                    "slope_log_qnorm": coef[..., 2].ravel(),
                    "fit_r2": (
                        fit_r2(arm, rules, j) if fitted else np.full(frac.shape, np.nan)
                    ).ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[list(PER_HEAD_COLUMNS)]
