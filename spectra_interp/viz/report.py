"""A results folder -> one self-contained `report.html` (plotly.js and circuitsvis inline).

The page holds the verdict with its caveat, the whole-model figures, per-layer and per-head
tables, a head explorer (a click on the heatmap swaps that head's precomputed density, position
curves and attention view into place), the run's provenance and a glossary. Everything comes
from the results folder; no model is loaded and the page fetches nothing. The page is
`templates/report.html.j2` (extending `base.html.j2`) with its stylesheet and script beside it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from _plotly_utils.utils import convert_to_base64
from markupsafe import Markup

from spectra_interp.records import to_json
from spectra_interp.results import Results, load_results
from spectra_interp.results.layout import BudgetLayout
from spectra_interp.results.load import AttentionSample, read_json_object
from spectra_interp.results.store import write_text
from spectra_interp.stats.columns import CI, HEAD_COLUMNS
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.degenerate import COLUMN as DEGENERATE
from spectra_interp.stats.degenerate import measurable
from spectra_interp.stats.verdict import BeyondR, Verdict, degenerate_lines
from spectra_interp.viz import figures
from spectra_interp.viz.attention import bundle_js
from spectra_interp.viz.page import fig_json, macros, render_page, render_value
from spectra_interp.viz.provenance import flat_config, provenance, read_meta, run_parts

__all__ = ["build_report", "flat_config", "load_results", "render_value", "report_html"]

MODELS = {"trained": "trained", "random_init": "random init"}
# Panel resolution: 32 x 32 density bins and 32 position bins keep 2 models x 1000 heads small.
DENSITY_BINS = 32
POSITION_BINS = 32

# What the glossary says beyond the columns of head_stats.csv.
TERMS = {
    "H": "attention entropy of one query: H = −Σ_j p_j log p_j over the keys j it sees, in "
    "nats; at most log(keys seen), reached by uniform attention.",
    "‖q‖": "L2 norm of one query vector of one head, as it meets the keys (where it is read: "
    "q_source).",
    "random-init control": "the same architecture with fresh random weights (--seed), measured "
    "on the same windows. Its queries and keys are small and unrelated, so every logit is "
    "near 0 and attention is nearly uniform: H sits near its ceiling log(keys seen), and "
    "whatever r it shows comes from position, not from training.",
}


# --- summary.json, read in one place --------------------------------------------------------


@dataclass(frozen=True)
class CriterionRow:
    """One success criterion as the page shows it: name, description, met, the numbers."""

    name: str
    about: str
    met: bool
    detail: dict


@dataclass(frozen=True)
class SummaryFacts:
    """What the page takes from summary.json (the typed `stats.verdict.Verdict`);
    `summary_facts` is the only reader. All empty for a folder without a summary."""

    hypothesis: str | None = None
    all_met: bool | None = None
    criteria: list[CriterionRow] = field(default_factory=list)
    beyond: BeyondR | None = None
    temperature_share_median: float | None = None


def summary_facts(summary: Verdict | None) -> SummaryFacts:
    """The verdict's parts, read off the typed summary's attributes."""
    if summary is None:
        return SummaryFacts()
    criteria = [
        CriterionRow(
            name=name.replace("_", " "),
            about=crit.description,
            met=crit.met,
            detail={k: v for k, v in to_json(crit).items() if k not in ("met", "description")},
        )
        for name, crit in summary.criteria.items()
    ]
    beyond = summary.beyond_r
    return SummaryFacts(
        hypothesis=summary.hypothesis,
        all_met=summary.all_criteria_met,
        criteria=criteria,
        beyond=beyond,
        temperature_share_median=None if beyond is None else beyond.temperature_share.median,
    )


# --- data for the page ---------------------------------------------------------------------


def figure_heads(table: pd.DataFrame) -> pd.DataFrame:
    """The heads the figures show: all but those head_stats marks degenerate."""
    return measurable(table).reset_index(drop=True)


def _patch(traces: list[dict[str, np.ndarray]], title: str) -> dict:
    """A panel's arrays as plotly.js typed-array specs (plotly's own encoding) and its title."""
    out = {"title": title, "traces": [dict(t) for t in traces]}
    convert_to_base64(out)
    return out


def head_panels(
    results: Results, bins: int = DENSITY_BINS, n_pos_bins: int = POSITION_BINS
) -> tuple[dict[str, dict[str, dict]], dict[str, go.Figure]]:
    """Per model and head, the density and position summaries as patches; and figures to patch
    into. Titles name the model, then the head's numbers and how many sampled tokens it shows."""
    sample = results.token_sample
    if sample is None or sample.empty:
        return {}, {}
    rows = {(int(r["layer"]), int(r["head"])): r for r in results.head_stats.to_dict("records")}
    panels: dict[str, dict[str, dict]] = {}
    templates: dict[str, go.Figure] = {}
    by_model = sample.groupby("model") if "model" in sample else [("trained", sample)]
    for model, frame in by_model:
        if model not in MODELS:
            continue
        panels[model] = {}
        for (layer, head), g in frame.groupby(["layer", "head"], sort=True):
            key = f"{int(layer)},{int(head)}"
            row = rows.get((int(layer), int(head)), {"layer": layer, "head": head})
            density = figures.density_summary(g["qnorm"].to_numpy(), g["entropy"].to_numpy(), bins)
            n_keys = g["n_keys"].to_numpy() if "n_keys" in g else None
            profile = figures.position_profile(
                g["pos"].to_numpy(), g["qnorm"].to_numpy(), g["entropy"].to_numpy(), n_keys,
                n_pos_bins,
            )  # fmt: skip
            title = figures.head_title(row, str(model), sampled=density.n)
            name = MODELS[str(model)]
            panels[model][key] = {
                "density": _patch(
                    figures.density_traces(density), f"‖q‖ vs H · {name} model<br>{title}"
                ),
                "position": _patch(
                    figures.position_traces(profile),
                    f"‖q‖ and H by position · {name} model<br>L{layer} H{head}",
                ),
            }
            if not templates:
                templates["density"] = figures.density_figure(density)
                templates["position"] = figures.position_figure(profile)
    return panels, templates


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


PATTERN_LEVELS = 255  # attention weights as uint8 steps of 1/255: plenty for a picture


def _slice_source(meta: pd.DataFrame | None, window: int, start: int, t: int) -> dict:
    """Where a slice's tokens sit: the window's document and the slice's document positions."""
    out = {"window": window, "start": start, "doc": None, "doc_start": None}
    if meta is not None and {"window_id", "doc_id", "token_offset"} <= set(meta.columns):
        row = meta[meta["window_id"] == window]
        if not row.empty:
            out["doc"] = str(row["doc_id"].iloc[0])
            out["doc_start"] = int(row["token_offset"].iloc[0]) + start
    where = f"window {window}, positions {start}–{start + t - 1}"
    if out["doc"] is not None:
        where = (
            f"window {window} · {out['doc']}, document tokens {out['doc_start']}–"
            f"{out['doc_start'] + t - 1} (window positions {start}–{start + t - 1})"
        )
    out["label"] = where
    return out


def attention_payload(att: AttentionSample | None, meta: pd.DataFrame | None = None) -> dict | None:
    """The slices' patterns quantised to uint8 plus ‖q‖ and H, each slice named by its
    document and document positions (windows/meta.csv)."""
    if att is None:
        return None
    n_slices, n_layers, n_heads, t, _ = att.pattern.shape
    quantised = np.round(np.clip(att.pattern, 0, 1) * PATTERN_LEVELS).astype("u1")
    return {
        "layers": n_layers,
        "heads": n_heads,
        "T": t,
        "levels": PATTERN_LEVELS,
        "slices": [
            {
                **_slice_source(meta, int(att.window_ids[i]), int(att.starts[i]), t),
                "tokens": att.token_strs[i],
                "pattern": _b64(quantised[i]),
                "qnorm": _b64(att.qnorm[i].astype("<f4")),
                "entropy": _b64(att.entropy[i].astype("<f4")),
            }
            for i in range(n_slices)
        ],
    }


def alpha_payload(frame: pd.DataFrame | None) -> dict | None:
    """Per head, mean H at each query scale (alpha_response.csv)."""
    if frame is None or frame.empty:
        return None
    scales = sorted(frame["scale"].unique().tolist())
    curves = {
        f"{int(layer)},{int(head)}": g.sort_values("scale")["mean_entropy"].round(5).tolist()
        for (layer, head), g in frame.groupby(["layer", "head"])
    }
    return {"scales": scales, "curves": curves}


def metrics_payload(table: pd.DataFrame) -> dict[str, dict]:
    """The heatmap's metric switch: every metric the table can colour the map with, each with
    its fixed colour range and the heads outside it."""
    out = {}
    for name, metric in figures.HEATMAP_METRICS.items():
        values = figures.metric_values(table, name)
        if np.isfinite(values).any():
            z = figures.grid(table, values)
            out[name] = {
                "label": metric.label,
                "short": metric.short,
                "title": figures.heatmap_title(metric),
                "hover": figures.heatmap_hover(metric),
                "note": metric.scale_note(),
                "z": np.where(np.isfinite(z), z, np.array(None)).tolist(),
                "zmin": metric.zmin,
                "zmax": metric.zmax,
                "zmid": metric.zmid,
                "colorscale": [list(c) for c in metric.colorscale],
                "outside": figures.out_of_range(table, name),
            }
    return out


def rows_payload(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Every head's statistics written as the page shows them (`figures.format_number`)."""
    return {
        f"{int(row['layer'])},{int(row['head'])}": {
            k: figures.format_number(v) for k, v in row.items()
        }
        for row in table.to_dict("records")
    }


def phase2_links(results: Results) -> list[dict[str, str]]:
    """Phase 2 reports of the same model (config.json's `model`) beside this folder."""
    model = str(flat_config(results.config).get("model", ""))
    if not model:
        return []
    found = sorted(
        p
        for p in results.path.parent.iterdir()
        if BudgetLayout.holds(p)
        and BudgetLayout(p).report.is_file()
        and flat_config(read_json_object(BudgetLayout(p).config)).get("model") == model
    )
    return [{"name": p.name, "href": f"../{p.name}/{BudgetLayout.REPORT}"} for p in found]


def initial_heads(table: pd.DataFrame, n: int = 5) -> list[tuple[int, int]]:
    """The heads shown first: passing heads by most negative r, then the rest by r (L0 H0 when
    no head is measured: every head degenerate)."""
    if table.empty:
        return [(0, 0)]
    if "pearson_r" not in table or table["pearson_r"].isna().all():
        return [(int(table["layer"].iloc[0]), int(table["head"].iloc[0]))]
    order = table.assign(_pass=~figures.passes_mask(table)).sort_values(["_pass", "pearson_r"])
    return [(int(r["layer"]), int(r["head"])) for _, r in order.head(n).iterrows()]


def initial_head(table: pd.DataFrame) -> tuple[int, int]:
    """The head shown first: the passing head with the most negative r, else the most negative."""
    return initial_heads(table, 1)[0]


# --- the page's sections, as plain values for the template ----------------------------------


@dataclass(frozen=True)
class VerdictLine:
    """The verdict line: the summary's flag, the count of passing heads, and the caveat in
    plain words."""

    met: bool | None
    word: str
    counted: str
    caveats: list[str]


def verdict_line(facts: SummaryFacts, table: pd.DataFrame, criteria: Criteria) -> VerdictLine:
    """The verdict with its caveats, every number from the table and the summary."""
    passing = figures.passes_mask(table)
    sign = figures.sign_of(table)
    n, n_pass = len(table), int(passing.sum())
    neg, pos = int((passing & (sign < 0)).sum()), int((passing & (sign > 0)).sum())
    share = n_pass / n if n else 0.0
    counted = (
        f"{n_pass} of {n} heads pass = {share:.1%} ({neg} with r < 0, {pos} with r > 0); the "
        f"criterion needs {figures.heads_needed(criteria, n)} ({criteria.min_share:.0%})."
    )
    word = ""
    if facts.all_met is not None:
        word = "all success criteria met" if facts.all_met else "success criteria not all met"
    caveats = [
        "Part of a negative r is guaranteed: scaling a query scales all its logits, and a "
        "sharper softmax has a lower H (dH/dlog‖q‖ = −Var_p(s) ≤ 0).",
    ]
    m = facts.temperature_share_median
    if m is not None:
        caveats.append(
            f"The median temperature share is {m:.2f}: for the median head the observed slope "
            f"of H on log‖q‖ is {m:.0%} of what rescaling that head's queries alone produces "
            "(1: rescaling alone explains the relation, 0: none of it). A passing head shows "
            "that ‖q‖ predicts H, not that ‖q‖ carries more than a temperature."
        )
    caveats.append(
        f"{n - n_pass} of {n} heads ({1 - share:.1%}) do not pass; an engine reading ‖q‖ would "
        "need another rule for them."
    )
    return VerdictLine(facts.all_met, word, counted, caveats)


def cards(table: pd.DataFrame, criteria: Criteria) -> list[tuple[str, str, str]]:
    """Headline numbers with their one-line meaning, computed from head_stats so they exist
    whatever the summary."""
    passing = figures.passes_mask(table)
    sign = figures.sign_of(table)
    n = len(table)
    out = [
        ("heads", f"{n:,}", "query heads measured: layers × query heads"),
        ("passing", f"{int(passing.sum()):,}", HEAD_COLUMNS["passes"]),
        (
            "share passing",
            f"{passing.mean() if n else 0:.1%}",
            f"passing heads over all heads; the criterion needs {criteria.min_share:.0%}",
        ),
        (
            "passing, r < 0",
            f"{int((passing & (sign < 0)).sum()):,}",
            "passing heads where a larger ‖q‖ goes with a lower H (the hypothesis' direction)",
        ),
        (
            "passing, r > 0",
            f"{int((passing & (sign > 0)).sum()):,}",
            "passing heads where a larger ‖q‖ goes with a higher H",
        ),
    ]
    if "pearson_r" in table:
        r = pd.to_numeric(table["pearson_r"], errors="coerce")
        out.append(
            (
                f"|r| ≥ {criteria.r_threshold}",
                f"{int(criteria.strong(r).sum()):,}",
                "heads whose |pearson_r| reaches the threshold, significant or not",
            )
        )
        out.append(("median r", f"{r.median():+.3f}", "median over heads of pearson_r"))
        if r.notna().any():
            row = table.loc[r.idxmin()]
            out.append(
                (
                    "most negative",
                    f"L{int(row['layer'])} H{int(row['head'])}: {r.min():+.3f}",
                    "the head with the lowest pearson_r",
                )
            )
    return out


# Rows of the controls table: (column, name); each a per-head r whose size is compared.
CONTROL_ROWS = (
    ("pearson_r", "trained model"),
    ("perm_r", "permutation control (‖q‖ shuffled)"),
    ("perm_r_within", "permutation within windows"),
    ("random_init_r", "random-init control"),
    ("partial_r_position", "trained, given keys seen (position)"),
    ("within_window_r", "trained, within windows"),
)


def control_rows(table: pd.DataFrame, criteria: Criteria) -> list[dict]:
    """|r| of the trained model and each control over heads: median, mean, max, heads at the
    threshold, all from head_stats.csv (the rows the table has)."""
    out = []
    for column, name in CONTROL_ROWS:
        if column not in table:
            continue
        r = pd.to_numeric(table[column], errors="coerce").abs()
        if r.isna().all():
            continue
        out.append(
            {
                "name": name,
                "column": column,
                "meaning": HEAD_COLUMNS.get(column, name),
                "median": f"{r.median():.3f}",
                "mean": f"{r.mean():.3f}",
                "max": f"{r.max():.3f}",
                "strong": int(criteria.strong(r).sum()),
            }
        )
    return out


def control_notes(summary: Verdict | None) -> list[str]:
    """The random-init control's refusal and the heads left out as degenerate, in plain words."""
    if summary is None:
        return []
    notes = degenerate_lines(summary.degenerate)
    control = summary.controls.random_init
    if control.usable is False:
        notes.insert(0, f"The random-init model cannot serve as a control: {control.reason}.")
    return notes


def per_layer_rows(table: pd.DataFrame) -> list[dict]:
    """Per layer: heads, passing heads by sign, mean, min and max r."""
    counts = figures.passing_counts(table)
    r = pd.to_numeric(table.get("pearson_r"), errors="coerce")
    stats = r.groupby(table["layer"]).agg(["mean", "min", "max"])
    return [
        {
            "layer": int(c.layer),
            "heads": int(c.heads),
            "passing": int(c.negative + c.positive),
            "negative": int(c.negative),
            "positive": int(c.positive),
            "mean_r": f"{stats.loc[c.layer, 'mean']:+.3f}",
            "min_r": f"{stats.loc[c.layer, 'min']:+.3f}",
            "max_r": f"{stats.loc[c.layer, 'max']:+.3f}",
        }
        for c in counts.itertuples()
    ]


LAYER_COLUMNS = {
    "layer": "layer index",
    "heads": "query heads in the layer",
    "passing": "heads that pass the pass rule",
    "negative": "passing heads with r < 0",
    "positive": "passing heads with r > 0",
    "mean_r": "mean pearson_r over the layer's heads",
    "min_r": "lowest pearson_r in the layer",
    "max_r": "highest pearson_r in the layer",
}
# The sortable head table's columns (those the run has).
HEAD_TABLE_COLUMNS = (
    "layer", "head", "pearson_r", "ci_low", "ci_high", "q_fdr", "passes", DEGENERATE,
    "partial_r_position",
    "delta_r2", "temperature_share", "random_init_r", "auroc_low_entropy", "n_tokens",
)  # fmt: skip


def head_table(table: pd.DataFrame) -> dict:
    """Every head with the columns that matter most, as text and as sort keys."""
    cols = [c for c in HEAD_TABLE_COLUMNS if c in table]
    rows = []
    for row in table[cols].to_dict("records"):
        cells = []
        for c in cols:
            v = row[c]
            key = float(v) if isinstance(v, int | float | np.number) and not isinstance(
                v, bool | np.bool_
            ) else str(v)  # fmt: skip
            cells.append({"text": figures.format_number(v), "key": key})
        rows.append(cells)
    return {"columns": [(c, HEAD_COLUMNS.get(c, c)) for c in cols], "rows": rows}


def top_heads(table: pd.DataFrame, n: int = 8) -> list[tuple[str, list[dict]]]:
    """The most negative and most positive heads, as rows for the clickable tables."""
    if "pearson_r" not in table:
        return []
    passing = figures.passes_mask(table)

    def rows(frame: pd.DataFrame) -> list[dict]:
        out = []
        for idx, row in frame.iterrows():
            ci = ""
            if {"ci_low", "ci_high"} <= set(row.index):
                ci = f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
            out.append(
                {
                    "layer": int(row["layer"]),
                    "head": int(row["head"]),
                    "r": f"{row['pearson_r']:+.3f}",
                    "ci": ci,
                    "q": figures.format_number(float(row["q_fdr"]))
                    if "q_fdr" in row.index
                    else "—",
                    "passes": bool(passing[table.index.get_loc(idx)]),
                }
            )
        return out

    ordered = table.sort_values("pearson_r")
    return [
        ("Most negative r", rows(ordered.head(n))),
        ("Most positive r", rows(ordered.tail(n).iloc[::-1])),
    ]


# --- the run line -----------------------------------------------------------------------------


def run_line(config: dict, results: Results) -> str:
    """The run line as HTML: each label in bold, then its value, joined by " · "."""
    return str(macros().run_line(run_parts(config, results)))


def glossary_terms(config: dict) -> dict[str, str]:
    """The terms the columns use, with where this run read q (config.json's q_source)."""
    terms = dict(TERMS)
    source = config.get("q_source") if isinstance(config, dict) else None
    if isinstance(source, dict) and isinstance(source.get("source"), str):
        text = source["source"]
        if isinstance(source.get("why"), str):
            text += f": {source['why']}"
        if isinstance(source.get("method"), str):
            text += f" (method {source['method']})"
        terms["q_source"] = f"where this run read each query q: {text}."
    else:
        terms["q_source"] = "where q is read; this folder's config.json does not record it."
    return terms


# --- the page ---------------------------------------------------------------------------------


def page_data(results: Results, table: pd.DataFrame, criteria: Criteria) -> dict:
    """The JSON block the page's script reads."""
    panels, templates = head_panels(results)
    strongest = initial_heads(table)
    alpha = results.alpha_response
    alpha_fig = None
    if alpha is not None:
        alpha_fig = figures.alpha_curves(
            alpha, strongest, "H with the query scaled by alpha: the strongest heads"
        )
    return {
        "layers": [int(v) for v in np.sort(table["layer"].unique())],
        "heads": [int(v) for v in np.sort(table["head"].unique())],
        "rows": rows_payload(results.head_stats),
        "glossary": HEAD_COLUMNS,
        "metrics": metrics_payload(table),
        "panels": panels,
        "models": {k: v for k, v in MODELS.items() if k in panels},
        "templates": {k: fig_json(v) for k, v in templates.items()},
        "figures": {
            "heatmap": fig_json(figures.head_heatmap(table)),
            "verdict": fig_json(figures.verdict_figure(table)),
            "distribution": fig_json(figures.r_distribution(table, criteria)),
            "uncertainty": fig_json(figures.uncertainty_figure(table, criteria)),
            "robustness": fig_json(figures.robustness_figure(table, criteria)),
            "random_init": fig_json(figures.random_init_scatter(table))
            if "random_init_r" in table and table["random_init_r"].notna().any()
            else None,
            "gain": fig_json(figures.gain_scatter(table)),
            "alpha": fig_json(alpha_fig),
        },
        "alpha": alpha_payload(alpha),
        "attention": attention_payload(results.attention, read_meta(results)),
        "initial": list(strongest[0]),
    }


def report_html(results: Results) -> str:
    """The whole page as one string."""
    criteria = results.criteria
    table = figure_heads(results.head_stats)
    facts = summary_facts(results.summary)
    return render_page(
        "report.html.j2",
        css=["report.css"],
        app_js="report.js",
        # every head degenerate: the figures keep the grid, with no statistic to colour it
        data=page_data(results, results.head_stats if table.empty else table, criteria),
        model=str(flat_config(results.config).get("model", "")),
        run_parts=run_parts(results.config, results),
        facts=facts,
        verdict=verdict_line(facts, table, criteria),
        cards=cards(table, criteria),
        criteria_rows=facts.criteria,
        controls=control_rows(table, criteria),
        control_notes=control_notes(results.summary),
        threshold=criteria.r_threshold,
        left_out=len(results.head_stats) - len(table),
        top_heads=top_heads(table),
        ci=CI,
        per_layer=per_layer_rows(table),
        layer_columns=LAYER_COLUMNS,
        head_table=head_table(results.head_stats),
        glossary=HEAD_COLUMNS,
        terms=glossary_terms(results.config),
        provenance=provenance(results),
        phase2=phase2_links(results),
        summary=None if results.summary is None else results.summary.to_json(),
        config=results.config,
        circuitsvis_js=Markup(bundle_js()),
    )


def build_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` (or `out`) from the results folder alone and return its path."""
    results = load_results(results_dir)
    target = Path(out) if out is not None else results.layout.report
    write_text(target, report_html(results))
    return target
