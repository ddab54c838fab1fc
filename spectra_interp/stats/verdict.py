"""The verdict: a head table summarised against the seed's success criteria, as JSON and text."""

from __future__ import annotations

import math

import pandas as pd

from spectra_interp.errors import SpectraError
from spectra_interp.stats.criteria import SUMMARY_KEY, Criteria
from spectra_interp.stats.degenerate import degenerate_summary, measurable


def _num(v: float) -> float | None:
    """A JSON-safe float: NaN becomes None."""
    v = float(v)
    return v if math.isfinite(v) else None


def _mean(a: pd.Series) -> float | None:
    a = a.dropna()
    return _num(a.mean()) if len(a) else None


def _max(a: pd.Series) -> float | None:
    a = a.dropna()
    return _num(a.max()) if len(a) else None


def verdict(
    table: pd.DataFrame,
    criteria: Criteria | None = None,
    *,
    perm_column: str = "perm_r",
    control: dict | None = None,
) -> dict:
    """Summary of a ``head_table`` against the seed's success criteria (JSON-serialisable).

    A head passes by `criteria` (recomputed here from the table). Criteria:
    - effect_size: |r| >= r_threshold in a meaningful subset of heads, where meaningful means at
      least ``min_share`` (10%) of all heads tested. Why 10%: the point of Phase 1 is a cheap
      predictor an inference engine can use, which pays only if a noticeable share of attention
      is covered; and among hundreds of heads a few outliers (e.g. attention-sink heads) reach
      any threshold without saying anything general about attention.
    - significance: the same subset survives correction: heads with |r| >= r_threshold and
      cluster-level BH q < alpha are at least ``min_share`` of all heads.
    - randomization_control: the mean over heads of r with ‖q‖ permuted within windows
      (``perm_column``) is within ``perm_tolerance`` of 0. The default, pooled ``perm_r``, keeps
      any between-window association (documents differing in both mean ‖q‖ and mean H), so it
      can miss the tolerance on real data without a bug; ``perm_column="perm_r_within"`` is the
      exact null (expectation 0). Both are reported when the table has them.
    The random-init, position and within-window numbers are reported, not criteria.
    Degenerate heads (`stats.degenerate`) are left out of every count, share, mean and median
    and listed under ``degenerate``; `control` (`stats.degenerate.control_usability` of the
    random-init model) says whether that control can serve as one.
    """
    left_out = degenerate_summary(table)
    table = measurable(table)
    criteria = criteria or Criteria()
    r_threshold, alpha = criteria.r_threshold, criteria.fdr
    min_share, perm_tolerance = criteria.min_share, criteria.perm_tolerance
    need = {"layer", "head", "pearson_r", "q_fdr", perm_column, "random_init_r"}
    need |= {"partial_r_position"}
    missing = need - set(table.columns)
    if missing:
        raise SpectraError(f"The head table lacks columns {sorted(missing)}.")
    r = table["pearson_r"]
    strong = pd.Series(criteria.strong(r), index=table.index)
    passing = pd.Series(criteria.passes(r, table["q_fdr"]), index=table.index)
    neg, pos = passing & (r < 0), passing & (r > 0)
    total = len(table)
    n_pass = int(passing.sum())

    per_layer = []
    for layer, g in table.groupby("layer", sort=True):
        idx = g.index
        per_layer.append(
            {
                "layer": int(layer),
                "heads": len(g),
                "passing": int(passing[idx].sum()),
                "negative": int(neg[idx].sum()),
                "positive": int(pos[idx].sum()),
                "mean_r": _mean(g["pearson_r"]),
                "min_r": _num(g["pearson_r"].min()),
                "max_r": _num(g["pearson_r"].max()),
            }
        )

    has_random = bool(table["random_init_r"].notna().any())
    perm_mean = _mean(table[perm_column])
    strong_share = float(strong.sum()) / total if total else 0.0
    pass_share = n_pass / total if total else 0.0
    checks = {
        "effect_size": {
            "description": f"|r| >= {r_threshold} in at least {min_share:.0%} of heads",
            "met": bool(strong_share >= min_share and strong.any()),
            "heads": int(strong.sum()),
            "share": strong_share,
            "required_share": min_share,
        },
        "significance": {
            "description": (
                f"those heads have cluster-level BH q < {alpha} (p < {alpha} after correction), "
                f"still at least {min_share:.0%} of heads"
            ),
            "met": bool(pass_share >= min_share and n_pass > 0),
            "heads": n_pass,
            "share": pass_share,
            "required_share": min_share,
            "strong_heads_not_significant": int((strong & ~passing).sum()),
            "max_q_of_passing": _max(table.loc[passing, "q_fdr"]),
        },
        "randomization_control": {
            "description": (
                f"mean {perm_column} (‖q‖ permuted within windows) within {perm_tolerance} of 0"
            ),
            "met": bool(perm_mean is not None and abs(perm_mean) <= perm_tolerance),
            "column": perm_column,
            "mean_perm_r": perm_mean,
            "tolerance": perm_tolerance,
        },
    }
    share_neg = int(neg.sum()) / n_pass if n_pass else None
    out = {
        "hypothesis": "H1: corr(‖q‖, attention entropy) < 0 per head",
        SUMMARY_KEY: criteria.to_dict(),
        "heads_total": total + left_out["count"],
        "heads_measured": total,
        "heads_with_r": int(r.notna().sum()),
        "passing": {
            "total": n_pass,
            "negative": int(neg.sum()),
            "positive": int(pos.sum()),
            "share_of_heads": pass_share,
            "share_negative": share_neg,
        },
        "per_layer": per_layer,
        "controls": {
            "randomization": {
                f"{stat}_{col}": fn(table[col] if stat == "mean" else table[col].abs())
                for col in ("perm_r", "perm_r_within")
                if col in table.columns
                for stat, fn in (("mean", _mean), ("mean_abs", _mean), ("max_abs", _max))
            },
            "random_init": {
                "available": has_random,
                "mean_r": _mean(table["random_init_r"]),
                "mean_abs_r": _mean(table["random_init_r"].abs()),
                "max_abs_r": _max(table["random_init_r"].abs()),
                "heads_abs_r_ge_threshold": int(
                    (table["random_init_r"].abs() >= r_threshold).sum()
                ),
            },
            "position": {
                "mean_abs_r": _mean(r.abs()),
                "mean_abs_partial_r": _mean(table["partial_r_position"].abs()),
                "mean_abs_r_passing": _mean(r[passing].abs()),
                "mean_abs_partial_r_passing": _mean(table.loc[passing, "partial_r_position"].abs()),
            },
            "within_window": {
                "mean_abs_r": _mean(r.abs()),
                "mean_abs_within_window_r": _mean(table["within_window_r"].abs())
                if "within_window_r" in table.columns
                else None,
            },
        },
        "criteria": checks,
        "all_criteria_met": all(c["met"] for c in checks.values()),
        "beyond_r": beyond_r(table, criteria),
        "degenerate": left_out,
    }
    if control is not None:
        out["controls"]["random_init"].update(control)
    return out


BEST_SHOWN = 5


def beyond_r(table: pd.DataFrame, criteria: Criteria) -> dict | None:
    """The second question: what ‖q‖ adds beyond position and the softmax's own rescaling. A
    finding, stated with its numbers; None for a table without these columns."""
    if "delta_r2" not in table.columns:
        return None
    lower, upper = table["delta_r2_ci_high"] < 0, table["delta_r2_ci_low"] > 0
    beyond = lower | upper
    share = float(beyond.mean()) if len(table) else 0.0
    ts = table["temperature_share"].dropna()
    quartiles = ts.quantile([0.25, 0.5, 0.75]).tolist() if len(ts) else [None] * 3
    best = table.dropna(subset=["auroc_low_entropy"]).nlargest(BEST_SHOWN, "auroc_low_entropy")
    if share >= criteria.min_share:
        finding = (
            f"‖q‖ explains variance of H beyond position in {int(beyond.sum())} of {len(table)} "
            f"heads ({share:.0%}; {int(lower.sum())} with larger ‖q‖ going with lower H); the "
            f"median |delta R^2| among them is "
            f"{_num(table.loc[beyond, 'delta_r2'].abs().median()):.3f}."
        )
    else:
        finding = (
            f"‖q‖ adds little beyond position: only {int(beyond.sum())} of {len(table)} heads "
            f"({share:.0%}) have a delta R^2 whose 95% CI excludes 0."
        )
    return {
        "question": "what does ‖q‖ add beyond position (delta R^2) and beyond rescaling "
        "(temperature share)?",
        "delta_r2": {
            "heads_ci_excludes_0": int(beyond.sum()),
            "heads_ci_below_0": int(lower.sum()),
            "heads_ci_above_0": int(upper.sum()),
            "share": share,
            "median": _mean_or(table["delta_r2"].median()),
            "median_abs": _mean_or(table["delta_r2"].abs().median()),
        },
        "temperature_share": {
            "q25": _mean_or(quartiles[0]),
            "median": _mean_or(quartiles[1]),
            "q75": _mean_or(quartiles[2]),
            "heads": int(len(ts)),
        },
        "best_auroc_heads": [
            {
                "layer": int(row["layer"]),
                "head": int(row["head"]),
                "auroc_low_entropy": _num(row["auroc_low_entropy"]),
                "pearson_r": _num(row["pearson_r"]),
                "delta_r2": _num(row["delta_r2"]),
            }
            for _, row in best.iterrows()
        ],
        "finding": finding,
    }


def _mean_or(v: float | None) -> float | None:
    return None if v is None else _num(v)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def verdict_text(summary: dict) -> str:
    """A few printable lines from ``verdict``'s summary."""
    p, c, ctl = summary["passing"], summary["criteria"], summary["controls"]
    criteria = Criteria.from_summary(summary)
    share_neg = "n/a" if p["share_negative"] is None else f"{p['share_negative']:.0%}"
    lines = [
        f"Heads: {summary['heads_total']}{_left_out(summary)}; passing ({criteria.describe()}): "
        f"{p['total']} "
        f"({p['negative']} negative, {p['positive']} positive; {share_neg} negative).",
    ]
    for name, crit in c.items():
        mark = "met" if crit["met"] else "NOT met"
        if name == "randomization_control":
            detail = f"mean perm r = {_fmt(crit['mean_perm_r'], '+.4f')}"
        else:
            detail = f"{crit['heads']} heads ({crit['share']:.1%})"
        lines.append(f"  [{mark}] {crit['description']}: {detail}")
    ri = ctl["random_init"]
    ri_text = (
        f"random-init mean r = {_fmt(ri['mean_r'], '+.3f')}, max |r| = {_fmt(ri['max_abs_r'])}"
        if ri["available"]
        else "random-init control not run"
    )
    if ri.get("usable") is False:
        ri_text = f"the random-init model cannot serve as a control: {ri['reason']}"
    rnd, ww = ctl["randomization"], ctl["within_window"]
    lines.append(
        f"Controls: perm r mean {_fmt(rnd.get('mean_perm_r'), '+.4f')}, max |.| "
        f"{_fmt(rnd.get('max_abs_perm_r'))} (window means removed: mean "
        f"{_fmt(rnd.get('mean_perm_r_within'), '+.4f')}); {ri_text}; mean |r| = "
        f"{_fmt(ctl['position']['mean_abs_r'])}, controlling for position "
        f"{_fmt(ctl['position']['mean_abs_partial_r'])}, within windows "
        f"{_fmt(ww['mean_abs_within_window_r'])}."
    )
    lines += degenerate_lines(summary)
    lines.append(
        "Verdict: all seed criteria met." if summary["all_criteria_met"] else "Verdict: not met."
    )
    extra = summary.get("beyond_r")
    if extra:
        ts = extra["temperature_share"]
        best = ", ".join(
            f"L{h['layer']}H{h['head']} {_fmt(h['auroc_low_entropy'], '.2f')}"
            for h in extra["best_auroc_heads"]
        )
        lines += [
            f"Beyond r: {extra['finding']}",
            f"  temperature share (observed slope / rescaling gain): median "
            f"{_fmt(ts['median'], '.2f')} (quartiles {_fmt(ts['q25'], '.2f')} to "
            f"{_fmt(ts['q75'], '.2f')}); best AUROC for sharp attention: {best or 'n/a'}.",
        ]
    return "\n".join(lines)


def interpretation(summary: dict) -> list[str]:
    """The run's numbers in a few plain sentences (the story notebook's closing lines)."""
    c = summary["criteria"]
    criteria = Criteria.from_summary(summary)
    met = "all met" if summary["all_criteria_met"] else "not all met"
    lines = [
        f"Success criteria of the original plan: {met} ({c['effect_size']['heads']} heads with "
        f"|r| >= {criteria.r_threshold}, {c['significance']['heads']} of them significant after "
        f"correction, mean permuted r {_fmt(c['randomization_control']['mean_perm_r'], '+.4f')}).",
    ]
    beyond = summary.get("beyond_r")
    if beyond:
        ts = beyond["temperature_share"]
        lines += [
            f"Beyond position: {beyond['finding']}",
            f"Beyond rescaling: the median temperature share is {_fmt(ts['median'], '.2f')} "
            f"(quartiles {_fmt(ts['q25'], '.2f')} to {_fmt(ts['q75'], '.2f')}); 1 would mean the "
            "observed dependence of H on ‖q‖ is what rescaling the query alone produces.",
        ]
    return lines


DEGENERATE_SHOWN = 12


def _left_out(summary: dict) -> str:
    n = (summary.get("degenerate") or {}).get("count", 0)
    return f" ({n} degenerate, left out)" if n else ""


def degenerate_lines(summary: dict) -> list[str]:
    """The heads left out as degenerate, as one printable line (none: no line)."""
    found = summary.get("degenerate") or {"count": 0, "heads": []}
    if not found["count"]:
        return []
    heads = found["heads"]
    shown = heads[:DEGENERATE_SHOWN]
    named = ", ".join(f"L{h['layer']}H{h['head']} ({h['reason']})" for h in shown)
    more = f" and {len(heads) - DEGENERATE_SHOWN} more" if len(heads) > DEGENERATE_SHOWN else ""
    return [
        f"Degenerate heads left out of every count, median and criterion: {found['count']}: "
        f"{named}{more}."
    ]
