"""From the masked shards to the results: budget curves, per-head budgets, the allocation per
cell, the breakdown by source and the verdict per budget (pure).

Inference takes documents as the independent units: every window is summed into its document
first. KL intervals are percentile intervals of a document bootstrap (`stats.inference`). The
paired test of qnorm against its shuffled control uses the same documents for both arms: the
statistic is the difference of their mean KLs, its standard error the delete-one-document
jackknife (CV3), and t is referred to Student t on (documents - 1) degrees of freedom, one-sided
(qnorm lower). The verdict itself is the KL ratio (`verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float
from scipy import stats as sps

from spectra_interp.budget import verdict as vd
from spectra_interp.budget.allocate import FRACTIONS
from spectra_interp.budget.arms import (
    ARMS,
    BOUND,
    CEILING,
    CONTROL,
    DENSE,
    FEATURE,
    FITTED,
    HEAD,
    POSITION,
    PROPOSAL,
    REGISTRY,
    RIVAL,
)
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
    "lambda_transfer_budget": "the mean fraction a fitted arm reaches on the evaluation documents "
    "with λ fixed on the calibration documents (what an engine could set in advance)",
    "keys_read": "keys read per query head, mean count: the kept keys, and for an arm that "
    "estimates its count on quantised keys also every visible key at bits/16 (estimated_top_p: "
    "4/16)",
}
PER_HEAD_COLUMNS: dict[str, str] = {
    "arm": "the arm",
    "budget": "its target budget",
    "layer": "layer",
    "head": "query head",
    "kv_head": "the KV head it reads",
    "keys_frac": "that head's mean fraction of visible keys kept",
    "share": "its fraction over the arm's mean (the head's share of the budget)",
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
    kept_keys: Float[np.ndarray, "window combo layer head"]  # sum over queries of kept keys
    union: Float[np.ndarray, "window combo"]  # sum over (layer, KV head, query) of union / visible
    n_queries: int  # evaluated queries per (window, layer, head)
    n_kv_heads: int

    def rows(self, pick: Bool[np.ndarray, " window"]) -> Masked:
        """The windows `pick` selects, in order."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v[pick] for k, v in arrays.items() if isinstance(v, np.ndarray)})


def curve_table(
    masked: Masked,
    budgets: tuple[float, ...],
    clusters: Clusters,
    transfer: dict[str, list[float]],
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
    n_q = n_windows * n_layers * n_heads * masked.n_queries
    keys = masked.kept.sum(axis=(0, 2, 3)) / n_q
    keys_read = masked.kept_keys.sum(axis=(0, 2, 3)) / n_q
    union = masked.union.sum(0) / (n_windows * n_layers * masked.n_kv_heads * masked.n_queries)
    ordered = sorted(budgets)
    rows = []
    for c, (arm, budget) in enumerate(combos(budgets)):
        bits = REGISTRY[arm].estimate_bits
        read = keys_read[c] + (bits / 16 * keys_read[0] if bits else 0.0)
        moved = transfer.get(arm)
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
                "lambda_transfer_budget": (
                    moved[ordered.index(budget)] if moved is not None else np.nan
                ),
                "keys_read": read,
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


def document_kl(masked: Masked, clusters: Clusters) -> tuple[np.ndarray, np.ndarray]:
    """Per document and combo the summed KL, and per document the tokens."""
    kl = clusters.sum(masked.kl.sum(-1, dtype=np.float64))
    n = clusters.sum(np.full(len(clusters.ids), float(masked.kl.shape[-1])))
    return kl, n


def verdicts(
    masked: Masked,
    budgets: tuple[float, ...],
    clusters: Clusters,
    *,
    alpha: float,
    margin: float,
    n_boot: int,
    seed: int,
) -> list[vd.BudgetVerdict]:
    """Per budget: the KL ratio of qnorm to head_position and its call, qnorm against its
    shuffled control, and the gaps to the entropy ceiling and the oracle that qnorm closes."""
    kl, n = document_kl(masked, clusters)
    index = {combo: c for c, combo in enumerate(combos(budgets))}
    level = 1 - 2 * alpha
    boot = {"level": level, "n_boot": n_boot, "seed": seed}
    out = []
    for b in sorted(budgets):
        arm, rival, control, ceiling, bound = (
            kl[:, index[(a, float(b))]] for a in (PROPOSAL, RIVAL, CONTROL, CEILING, BOUND)
        )
        ratio = vd.ratio_interval(arm, rival, **boot)
        test = paired_test(arm, control, n)
        beats = bool(
            test["kl_diff"] < 0 and np.isfinite(test["p_one_sided"]) and test["p_one_sided"] < alpha
        )
        called = vd.call(ratio, margin, beats)
        out.append(
            vd.BudgetVerdict(
                budget=float(b),
                ratio=ratio,
                call=called,
                documents_to_decide=(
                    vd.documents_to_decide(ratio, margin, clusters.n)
                    if called == vd.UNDECIDED
                    else None
                ),
                qnorm_vs_control=test,
                beats_control=beats,
                entropy_gap_closed=vd.gap_closed(arm, rival, ceiling, **boot),
                oracle_gap_closed=vd.gap_closed(arm, rival, bound, **boot),
                control_oracle_gap_closed=vd.gap_closed(control, rival, bound, **boot),
            )
        )
    return out


def source_table(
    masked: Masked,
    budgets: tuple[float, ...],
    sources: pd.Series,
    clusters: Clusters,
    **inference: Any,
) -> list[dict[str, Any]]:
    """Per source of the evaluation windows and budget: each arm's mean KL, and the verdict
    (`verdicts`, with `inference`'s alpha, margin, n_boot and seed) on that source's documents
    alone: its ratio qnorm / head_position with the interval, and its call."""
    rows = []
    index = {combo: c for c, combo in enumerate(combos(budgets))}
    kl = masked.kl.sum(-1, dtype=np.float64)
    for source in sorted(sources.unique()):
        pick = (sources == source).to_numpy()
        tokens = pick.sum() * masked.kl.shape[-1]
        own = clusters.rows(pick)
        called = verdicts(masked.rows(pick), budgets, own, **inference)
        for b, v in zip(sorted(budgets), called, strict=True):
            per_arm = {arm: float(kl[pick, index[(arm, float(b))]].sum() / tokens) for arm in ARMS}
            rows.append(
                {"source": source, "budget": float(b), **per_arm, "ratio": v.ratio.point,
                 "ratio_low": v.ratio.low, "ratio_high": v.ratio.high, "call": v.call,
                 "n_windows": int(pick.sum()), "n_documents": own.n}
            )  # fmt: skip
    return rows


def budget_report(
    curves: pd.DataFrame, planned: dict[str, list[float]], budgets: tuple[float, ...]
) -> dict:
    """How each arm met its budgets: target, planned on the dense pass, achieved when masked."""
    rows = []
    for arm in ARMS:
        for j, b in enumerate(sorted(budgets)):
            got = curves[(curves["arm"] == arm) & (curves["budget"] == b)]["keys_frac"].iloc[0]
            rows.append(
                {
                    "arm": arm,
                    "budget": float(b),
                    "planned": float(planned[arm][j]),
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


def per_head_table(masked: Masked, budgets: tuple[float, ...]) -> pd.DataFrame:
    """per_head.csv: the share of the budget each head got, per arm and budget."""
    n_windows = masked.kept.shape[0]
    n_layers, n_heads = masked.kept.shape[2:]
    per_head = masked.kept.sum(0) / (n_windows * masked.n_queries)  # [combo, layer, head]
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    kv_head = head // (n_heads // masked.n_kv_heads)
    frames = []
    for c, (arm, budget) in enumerate(combos(budgets)):
        if arm == DENSE:
            continue
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
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[list(PER_HEAD_COLUMNS)]


ALLOCATION_COLUMNS: dict[str, str] = {
    "arm": "the fitted arm",
    "budget": "its target budget",
    "cell": "the cell's index in the arm",
    "layer": "layer (-1: the cell spans every layer)",
    "head": "query head (-1: every head)",
    "position_bin": "bin of log(keys seen) (-1: every position)",
    "feature_bin": "quantile bin of the feature's residual (-1: none)",
    "calibration_queries": "calibration queries in the cell",
    "fraction": "the cell's mean kept fraction (between its two vertices where it is split)",
    "fraction_low": "the hull vertex the cell takes",
    "fraction_high": "the vertex above it (the cell split at λ only)",
    "share_high": "the share of the cell's queries that take fraction_high",
    "lambda": "the arm's λ at this budget (met on the evaluation documents)",
}


def allocation_table(plan: Any, n_layers: int, n_heads: int) -> pd.DataFrame:
    """allocation.csv: each fitted arm's cells and the fraction each keeps, per budget."""
    grid = plan.grid(n_layers, n_heads)
    grid_fraction = np.asarray(FRACTIONS)
    frames = []
    for name in FITTED:
        arm = REGISTRY[name]
        a = plan.fitted[name]
        n_cells = len(a.count)
        cell = np.arange(n_cells)
        coords = {HEAD: None, POSITION: None, FEATURE: None}
        rest = cell.copy()
        for level, size in reversed(list(zip(arm.cells, grid.sizes(arm), strict=True))):
            coords[level] = rest % size
            rest = rest // size
        minus = np.full(n_cells, -1)
        head_index = coords[HEAD]
        rows = np.arange(n_cells)
        for j, b in enumerate(plan.budgets):
            low = grid_fraction[a.vertex[rows, a.low[j]]]
            high = grid_fraction[a.vertex[rows, a.high[j]]]
            share = a.share_high[j]
            frames.append(
                pd.DataFrame(
                    {
                        "arm": name,
                        "budget": b,
                        "cell": cell,
                        "layer": minus if head_index is None else head_index // n_heads,
                        "head": minus if head_index is None else head_index % n_heads,
                        "position_bin": minus if coords[POSITION] is None else coords[POSITION],
                        "feature_bin": minus if coords[FEATURE] is None else coords[FEATURE],
                        "calibration_queries": a.count,
                        "fraction": (1 - share) * low + share * high,
                        "fraction_low": low,
                        "fraction_high": high,
                        "share_high": share,
                        "lambda": a.lam[j],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)[list(ALLOCATION_COLUMNS)]
