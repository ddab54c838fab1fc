"""Several results folders -> one self-contained `compare.html`: runs side by side.

The page holds a table of runs (model, architecture, settings, the verdict's numbers, Phase 2's
verdict per budget where a Phase 2 folder is given), per-layer figures against normalised depth
with cluster-bootstrap intervals, the distribution of per-head r of each run, and for runs of the
same architecture a head-by-head scatter of r. Folders are read with `viz.runs.load_run`;
no model is loaded and the page fetches nothing. Degenerate heads (head_stats.csv `degenerate`)
are left out of every share and figure. The page is `templates/compare.html.j2` (extending
`base.html.j2`, rendered by `page.render_page`) with its script beside it and the report's
stylesheet.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative

from spectra_interp.budget.verdict import Interval
from spectra_interp.errors import SpectraError
from spectra_interp.results.store import write_text
from spectra_interp.stats.clusters import Clusters
from spectra_interp.stats.columns import HEAD_COLUMNS
from spectra_interp.stats.layers import layer_profile
from spectra_interp.stats.table import head_table
from spectra_interp.viz.figures import TEMPLATE
from spectra_interp.viz.page import fig_json, render_page
from spectra_interp.viz.runs import BudgetRun, SweepRun, load_run

COLORS = qualitative.Plotly
# The level of the per-head intervals (`head_table`'s `ci_level`, what a sweep runs with): the
# per-layer bands are drawn at the same level.
CI_LEVEL: float = inspect.signature(head_table).parameters["ci_level"].default
# (metric of `layer_profile`, title, axis title) of each per-layer figure.
PROFILE_FIGURES = (
    ("mean_r", "mean r per layer", "mean r(‖q‖, H) of the layer's heads"),
    ("share_passing", "share of heads passing per layer", "share of the layer's heads that pass"),
    ("mean_delta_r2", "mean delta R² per layer", "mean delta R² of the layer's heads"),
)


def normalised_depth(layer: Any, n_layers: int) -> np.ndarray:
    """layer / (n_layers - 1): 0 at the first layer, 1 at the last (0 for a one-layer model)."""
    return np.asarray(layer, dtype=np.float64) / max(n_layers - 1, 1)


@dataclass
class Compared:
    """One sweep on the page: its label, colour, per-layer profile and Phase 2 runs shown on
    its row."""

    label: str
    color: str
    run: SweepRun
    profile: pd.DataFrame
    phase2: list[BudgetRun] = field(default_factory=list)


def labels_of(paths: Sequence[Path]) -> list[str]:
    """Each folder's name, with its parent's where two names are the same."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def profile_of(run: SweepRun) -> pd.DataFrame:
    """`layer_profile` of a run with its own resampling (clusters, n_boot, seed) and depth."""
    profile = layer_profile(
        run.stats,
        Clusters.of(run.meta),
        run.included,
        run.criteria,
        n_boot=run.n_boot,
        seed=run.seed,
        level=CI_LEVEL,
    )
    profile.insert(1, "depth", normalised_depth(profile["layer"], run.architecture.n_layers))
    return profile


def attach_phase2(
    sweeps: list[Compared], budget_runs: list[tuple[str, BudgetRun]]
) -> list[tuple[str, BudgetRun]]:
    """Put each Phase 2 run on the row of its sweep: the same model at the same ctx, else the
    only sweep of that model. Returns the (label, run) pairs left for rows of their own."""
    alone = []
    for label, b in budget_runs:
        same = [c for c in sweeps if c.run.model == b.model]
        exact = [c for c in same if c.run.ctx == b.ctx]
        target = exact if len(exact) == 1 else same if len(same) == 1 else []
        if target:
            target[0].phase2.append(b)
        else:
            alone.append((label, b))
    return alone


# --- the table of runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    about: str
    show: Callable[[Any], str] = str


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _signed(v: Any) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:+.3f}"


def _plain(v: Any) -> str:
    return "—" if v is None else f"{v:.2f}"


def _yes(v: Any) -> str:
    return "—" if v is None else "yes" if v else "no"


COLUMNS = (
    Column("run", "run", "the results folder"),
    Column("kind", "phase", "sweep (Phase 1) or key budgets (Phase 2)"),
    Column("model", "model", "the model measured"),
    Column("architecture", "architecture", "the Hugging Face architecture class"),
    Column("layers", "layers", "transformer blocks"),
    Column("heads", "query heads", "query heads per layer (statistics are per query head)"),
    Column("kv_heads", "KV heads", "key/value heads per layer (grouped-query attention)"),
    Column("d_head", "head size", "dimension of one query head"),
    Column("qk_norm", "QK-norm", "whether the model normalises its queries", _yes),
    Column("windows", "per-layer windows", "each layer's sliding window, in runs (full: causal)"),
    Column("q_source", "q source", "where ‖q‖ was read (config.json q_source)"),
    Column("dtype", "dtype", "the dtype the model ran in"),
    Column("ctx", "ctx", "tokens per window"),
    Column("n_windows", "windows", "windows measured"),
    Column("documents", "documents", "documents the windows came from; the unit resampled"),
    Column("corpus", "corpus", "the text measured"),
    Column("skip_first", "skip first", "positions left out at the start of each window"),
    Column("criteria", "criteria", "the pass rule of a head"),
    Column("degenerate", "degenerate heads", "heads left out of every share and figure"),
    Column("passing", "heads passing", HEAD_COLUMNS["passes"]),
    Column("passing_share", "share passing", "passing heads over heads counted", _pct),
    Column("median_r", "median r", "median over heads of pearson_r", _signed),
    Column(
        "criteria_met",
        "original plan met",
        "all success criteria of the original plan met (effect size, significance, "
        "randomization control)",
        _yes,
    ),  # fmt: skip
    Column(
        "temperature_share",
        "median temperature share",
        "median over heads of " + HEAD_COLUMNS["temperature_share"],
        _plain,
    ),  # fmt: skip
    Column(
        "delta_r2_share",
        "delta R² CI excludes 0",
        f"share of heads whose {CI_LEVEL:.0%} cluster-bootstrap interval of delta_r2 excludes 0",
        _pct,
    ),  # fmt: skip
    Column(
        "phase2",
        "Phase 2 verdict per budget",
        "the call on KL qnorm / KL head_position (helps, hurts, no useful effect, undecided), "
        "with the ratio and its document-bootstrap interval",
    ),
)
# Settings whose differences between runs change what the numbers mean: highlighted.
DIFFERENCES = {
    "corpus": "corpus",
    "criteria": "criteria",
    "skip_first": "skip-first",
    "q_source": "q source",
}


def phase2_text(runs: list[BudgetRun], ctx: int | None = None) -> str:
    """Each budget's call with its KL ratio qnorm / head_position and interval:
    "0.2: no useful effect (KL ratio 0.982 [0.931, 1.04])", per Phase 2 run."""
    parts = []
    for b in runs:
        cells = [f"{v.budget:g}: {v.call} (KL ratio {_ratio(v.ratio)})" for v in b.verdicts]
        where = "" if ctx == b.ctx else f" [Phase 2 at ctx {b.ctx}]"
        parts.append("; ".join(cells) + where)
    return " · ".join(parts) or "—"


def _ratio(r: Interval) -> str:
    def f(v: float | None) -> str:
        return "—" if v is None else format(v, ".3g")

    return f"{f(r.point)} [{f(r.low)}, {f(r.high)}]"


def sweep_row(c: Compared) -> dict[str, Any]:
    """The table's values of one sweep, as numbers: the counts, shares and flags read from its
    summary.json, the median r from its head table (degenerate heads left out)."""
    run, a, s = c.run, c.run.architecture, c.run.summary
    beyond = s.beyond_r
    r = pd.to_numeric(run.heads["pearson_r"], errors="coerce")
    return {
        "run": c.label,
        "kind": "sweep",
        "model": run.model,
        "architecture": a.name,
        "layers": a.n_layers,
        "heads": a.n_heads,
        "kv_heads": a.n_kv_heads,
        "d_head": a.d_head,
        "qk_norm": a.qk_norm,
        "windows": a.windows_text(),
        "q_source": run.q_source,
        "dtype": run.dtype,
        "ctx": run.ctx,
        "n_windows": run.run.n_windows,
        "documents": f"{run.run.n_documents} ({run.run.cluster_unit} bootstrap)",
        "corpus": run.run.corpus,
        "skip_first": run.run.skip_first,
        "criteria": run.criteria.describe(),
        "degenerate": int((~run.included).sum()),
        "passing": s.passing.total,
        "passing_share": s.passing.share_of_heads,
        "median_r": float(r.median()) if r.notna().any() else None,
        "criteria_met": s.all_criteria_met,
        "temperature_share": None if beyond is None else beyond.temperature_share.median,
        "delta_r2_share": None if beyond is None else beyond.delta_r2.share,
        "phase2": phase2_text(c.phase2, run.ctx),
    }


def budget_row(label: str, b: BudgetRun) -> dict[str, Any]:
    """A Phase 2 run on a row of its own (no sweep of its model on the page)."""
    n_docs = b.run.get("n_documents", {})
    return {
        "run": label,
        "kind": "Phase 2",
        "model": b.model,
        "ctx": b.ctx,
        "corpus": str(b.run.get("corpus", "")),
        "documents": ", ".join(f"{k} {v}" for k, v in n_docs.items()),
        "phase2": phase2_text([b], b.ctx),
    }


def differing(rows: list[dict[str, Any]]) -> list[str]:
    """The `DIFFERENCES` settings on which the sweeps' rows disagree."""
    sweeps = [r for r in rows if r["kind"] == "sweep"]
    return [k for k in DIFFERENCES if len({str(r.get(k)) for r in sweeps}) > 1]


def table_cells(rows: list[dict[str, Any]], differ: list[str]) -> list[dict[str, Any]]:
    """The table transposed, one line per column of `COLUMNS` (the runs across): its header,
    meaning, and each run's cell as shown with whether it is a highlighted difference."""
    return [
        {
            "header": c.header,
            "about": c.about,
            "differs": c.key in differ,
            "cells": [
                {
                    "text": "—" if row.get(c.key) is None else c.show(row[c.key]),
                    "differs": c.key in differ and row["kind"] == "sweep",
                }
                for row in rows
            ],
        }
        for c in COLUMNS
        if c.key != "run"
    ]


# --- figures -----------------------------------------------------------------------------------


def _rgba(color: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(color)
    return f"rgba({r},{g},{b},{alpha})"


def _layout(fig: go.Figure, title: str, x: str, y: str, **extra: Any) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title},
        xaxis={"title": {"text": x}},
        yaxis={"title": {"text": y}},
        legend={"orientation": "h", "y": -0.2},
        **extra,
    )
    return fig


def profile_figure(compared: list[Compared], metric: str) -> go.Figure:
    """One per-layer statistic against normalised depth, one line per run with its
    cluster-bootstrap band."""
    fig = go.Figure()
    for c in compared:
        p = c.profile
        x = p["depth"].tolist()
        low, high = p[f"{metric}_ci_low"], p[f"{metric}_ci_high"]
        band = {"mode": "lines", "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False}
        fig.add_trace(go.Scatter(x=x, y=high.tolist(), legendgroup=c.label, **band))
        fig.add_trace(
            go.Scatter(
                x=x, y=low.tolist(), legendgroup=c.label, fill="tonexty",
                fillcolor=_rgba(c.color, 0.18), **band,
            )
        )  # fmt: skip
        custom = np.stack([p["layer"], low, high, p["heads"]], axis=1)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=p[metric].tolist(),
                customdata=np.where(np.isfinite(custom), custom, np.array(None)).tolist(),
                mode="lines+markers",
                name=c.label,
                legendgroup=c.label,
                line={"color": c.color},
                marker={"size": 5},
                hovertemplate=f"{html.escape(c.label)}<br>layer %{{customdata[0]}} (depth "
                f"%{{x:.2f}}, %{{customdata[3]}} heads)<br>{metric} = %{{y:.4f}} "
                "[%{customdata[1]:.4f}, %{customdata[2]:.4f}]<extra></extra>",
            )
        )
    title, axis = next((t, a) for m, t, a in PROFILE_FIGURES if m == metric)
    fig = _layout(
        fig, f"{title} ({CI_LEVEL:.0%} bands)", "normalised depth: layer / (layers − 1)", axis
    )
    if metric == "share_passing":
        fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def _head_text(t: pd.DataFrame) -> list[str]:
    return [
        f"L{int(layer)} H{int(head)}" for layer, head in zip(t["layer"], t["head"], strict=True)
    ]


def r_distribution(compared: list[Compared]) -> go.Figure:
    """The empirical CDF of per-head r of each run (degenerate heads left out)."""
    fig = go.Figure()
    for c in compared:
        t = c.run.heads.dropna(subset=["pearson_r"]).sort_values("pearson_r")
        n = len(t)
        fig.add_trace(
            go.Scatter(
                x=t["pearson_r"].tolist(),
                y=(np.arange(1, n + 1) / max(n, 1)).tolist(),
                text=_head_text(t),
                mode="lines+markers",
                line={"shape": "hv", "color": c.color},
                marker={"size": 4},
                name=f"{c.label} ({n} heads)",
                hovertemplate=f"{html.escape(c.label)}<br>%{{text}}: r = %{{x:.4f}}<br>share of "
                "heads at or below: %{y:.3f}<extra></extra>",
            )
        )
    return _layout(
        fig, "per-head r of each run: empirical CDF", "Pearson r(‖q‖, H)", "share of heads",
    )  # fmt: skip


def same_architecture_pairs(compared: list[Compared]) -> list[tuple[Compared, Compared]]:
    """Every pair of runs whose architectures are the same (their heads match one to one)."""
    return [
        (a, b) for a, b in combinations(compared, 2) if a.run.architecture == b.run.architecture
    ]


def paired_r(a: Compared, b: Compared) -> pd.DataFrame:
    """r of the heads both runs count, side by side: layer, head, r_a, r_b."""
    cols = ["layer", "head", "pearson_r"]
    joined = a.run.heads[cols].merge(b.run.heads[cols], on=["layer", "head"], suffixes=("_a", "_b"))
    return joined.dropna().rename(columns={"pearson_r_a": "r_a", "pearson_r_b": "r_b"})


def pair_correlation(pairs: pd.DataFrame) -> float | None:
    """Pearson correlation across heads of the two runs' r (None with fewer than 3 heads)."""
    if len(pairs) < 3 or pairs["r_a"].std() == 0 or pairs["r_b"].std() == 0:
        return None
    return float(np.corrcoef(pairs["r_a"], pairs["r_b"])[0, 1])


def pair_scatter(a: Compared, b: Compared) -> tuple[go.Figure, float | None]:
    """r of every head in run `a` against run `b`, with the diagonal; and their correlation."""
    pairs = paired_r(a, b)
    corr = pair_correlation(pairs)
    fig = go.Figure(
        go.Scatter(
            x=pairs["r_a"].tolist(),
            y=pairs["r_b"].tolist(),
            text=_head_text(pairs),
            mode="markers",
            marker={"size": 6, "color": a.color, "opacity": 0.8},
            name="heads",
            hovertemplate=f"%{{text}}<br>{html.escape(a.label)}: r = %{{x:.4f}}<br>"
            f"{html.escape(b.label)}: r = %{{y:.4f}}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[-1, 1], y=[-1, 1], mode="lines", line={"dash": "dot", "color": "#888"},
            hoverinfo="skip", showlegend=False,
        )
    )  # fmt: skip
    shown = "n/a" if corr is None else f"{corr:+.3f}"
    return (
        _layout(
            fig,
            f"r per head: correlation across runs {shown} ({len(pairs)} heads)",
            f"r in {a.label}",
            f"r in {b.label}",
            showlegend=False,
        ),
        corr,
    )


# --- the page ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """What the page shows, before HTML: rows of the table, figures and pair correlations."""

    rows: list[dict[str, Any]]
    differ: list[str]
    compared: list[Compared]
    figures: dict[str, go.Figure]
    pairs: list[dict[str, Any]]


def load_page(folders: Sequence[str | Path]) -> Page:
    """Read every folder (sweeps and Phase 2) and compute the page's table and figures."""
    if not folders:
        raise SpectraError("spectra compare needs at least one results folder.")
    paths = [Path(f) for f in folders]
    runs = [load_run(p) for p in paths]
    labels = labels_of(paths)
    sweeps = [(label, r) for label, r in zip(labels, runs, strict=True) if isinstance(r, SweepRun)]
    compared = [
        Compared(label, COLORS[i % len(COLORS)], run, profile_of(run))
        for i, (label, run) in enumerate(sweeps)
    ]
    budgets = [
        (label, r) for label, r in zip(labels, runs, strict=True) if isinstance(r, BudgetRun)
    ]
    alone = attach_phase2(compared, budgets)
    rows = [sweep_row(c) for c in compared] + [budget_row(label, b) for label, b in alone]
    figures: dict[str, go.Figure] = {}
    if compared:
        for metric, _, _ in PROFILE_FIGURES:
            figures[metric] = profile_figure(compared, metric)
        figures["r_ecdf"] = r_distribution(compared)
    pairs = []
    for i, (a, b) in enumerate(same_architecture_pairs(compared)):
        fig, corr = pair_scatter(a, b)
        figures[f"pair_{i}"] = fig
        pairs.append({"id": f"pair_{i}", "a": a.label, "b": b.label, "correlation": corr})
    return Page(rows, differing(rows), compared, figures, pairs)


def resampling_note(compared: list[Compared]) -> str:
    """How each run's bands were drawn: clusters, resamples and seed (the per-head CIs')."""
    parts = []
    for c in compared:
        clusters = Clusters.of(c.run.meta)
        parts.append(
            f"{c.label}: {clusters.n} {clusters.unit}s, {c.run.n_boot} resamples, seed {c.run.seed}"
        )
    return "; ".join(parts)


def compare_html(folders: Sequence[str | Path]) -> str:
    """The whole page as one string, from the folders alone."""
    page = load_page(folders)
    names = {k: DIFFERENCES[k] for k in page.differ}
    data = {
        "figures": {k: fig_json(v) for k, v in page.figures.items()},
        "rows": page.rows,
        "pairs": page.pairs,
    }
    return render_page(
        "compare.html.j2",
        css=["report.css", "compare.css"],
        app_js="compare.js",
        data=data,
        runs_header=[r["run"] for r in page.rows],
        lines=table_cells(page.rows, page.differ),
        differ=list(names.values()),
        profiles=[m for m, _, _ in PROFILE_FIGURES if m in page.figures],
        has_sweeps=bool(page.compared),
        pairs=page.pairs,
        resampling=resampling_note(page.compared),
        level=CI_LEVEL,
        runs=[
            {"label": c.label, "color": c.color, "summary": c.run.summary.to_json()}
            for c in page.compared
        ],
    )


def build_compare(folders: Sequence[str | Path], out: str | Path = "compare.html") -> Path:
    """Write the comparison page of `folders` to `out`; return its path."""
    target = Path(out)
    write_text(target, compare_html(folders))
    return target
