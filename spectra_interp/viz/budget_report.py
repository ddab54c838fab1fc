"""A Phase 2 results folder -> one self-contained `report.html` (plotly.js inline).

The page holds the verdict (the KL ratio qnorm / head_position per budget with its interval and
the equivalence margin), quality against keys kept (one line per arm, with document-bootstrap
intervals), the memory cost of GQA unions, a per-head view of each arm's budget and a heatmap of
each head's allocated fraction by position bin. Everything comes from the folder
(budget_curves.csv, per_head.csv, allocation.csv, summary.json, config.json); no model is loaded
and the page fetches nothing. The page is `templates/budget_report.html.j2` with its
script and stylesheet beside it (and the sweep report's stylesheet).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from spectra_interp.budget.arms import (
    ARMS,
    BOUND,
    CEILING,
    CONTROL,
    DENSE,
    FITTED,
    POSITION,
    PROPOSAL,
    REGISTRY,
    RIVAL,
)
from spectra_interp.budget.curves import ALLOCATION_COLUMNS, CURVE_COLUMNS, PER_HEAD_COLUMNS
from spectra_interp.budget.verdict import Summary
from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import BudgetLayout
from spectra_interp.results.load import read_json_object
from spectra_interp.results.store import write_text
from spectra_interp.viz.figures import TEMPLATE
from spectra_interp.viz.page import fig_json, render_page
from spectra_interp.viz.provenance import flat_config, labelled

ARM_COLORS = {name: arm.colour for name, arm in REGISTRY.items()}
ARM_DASH = {name: arm.dash for name, arm in REGISTRY.items()}
# (column, axis title) of each quality-against-keys figure.
QUALITY_FIGURES = (
    ("kl_mean", "next-token KL(dense ‖ arm), nats"),
    ("ppl_delta_pct", "perplexity change, %"),
    ("top1_agree", "top-1 agreement with dense"),
    ("kv_union_frac", "keys read per KV head (GQA union), fraction"),
)


def _read_csv(path: Path, columns: Iterable[str]) -> pd.DataFrame:
    if not path.is_file():
        raise SpectraError(f"{path.parent} has no {path.name}: run `spectra budget` first.")
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SpectraError(f"{path} lacks the column(s) {', '.join(missing)}.")
    return frame


def quality_figure(curves: pd.DataFrame, column: str, title: str) -> go.Figure:
    """One quality measure against the achieved share of keys kept, one line per arm."""
    fig = go.Figure()
    dense = curves[curves["arm"] == DENSE]
    log_y = column == "kl_mean"  # KL spans decades; the dense point (KL 0) is the axis' floor
    for arm in ARMS:
        rows = curves[curves["arm"] == arm].sort_values("keys_frac")
        if rows.empty:
            continue
        if not log_y:
            rows = pd.concat([rows, dense])
        error = None
        if column == "kl_mean":
            error = {
                "type": "data",
                "array": (rows["kl_ci_high"] - rows["kl_mean"]).tolist(),
                "arrayminus": (rows["kl_mean"] - rows["kl_ci_low"]).tolist(),
                "thickness": 1,
            }
        fig.add_trace(
            go.Scatter(
                x=rows["keys_frac"].tolist(),
                y=rows[column].tolist(),
                error_y=error,
                mode="lines+markers",
                name=arm,
                line={"color": ARM_COLORS[arm], "dash": ARM_DASH[arm]},
                hovertemplate=f"{arm}<br>keys kept %{{x:.3f}}<br>{column} %{{y:.4g}}"
                "<extra></extra>",
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title},
        xaxis_title="keys kept (mean fraction of visible keys)",
        yaxis_title=title,
        legend={"orientation": "h", "y": -0.25},
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def head_grids(per_head: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Per arm and budget, each head's keys kept as a [layer][head] grid (for the heatmap)."""
    out: dict[str, dict[str, list]] = {}
    for (arm, budget), g in per_head.groupby(["arm", "budget"], sort=False):
        grid = g.pivot(index="layer", columns="head", values="keys_frac").sort_index()
        out.setdefault(str(arm), {})[f"{budget:g}"] = grid.to_numpy().round(5).tolist()
    return out


def allocation_grids(allocation: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """Per fitted arm with position cells and budget: each head's allocated fraction by position
    bin (feature bins averaged, weighted by their calibration queries), rows layer.head."""
    out: dict[str, dict[str, dict]] = {}
    for (arm, budget), g in allocation.groupby(["arm", "budget"], sort=False):
        if POSITION not in REGISTRY[str(arm)].cells:
            continue
        weight = g["calibration_queries"].clip(lower=1e-9)
        g = g.assign(w=weight, wf=weight * g["fraction"])
        cell = g.groupby(["layer", "head", "position_bin"])[["w", "wf"]].sum()
        grid = (cell["wf"] / cell["w"]).unstack("position_bin").sort_index()
        out.setdefault(str(arm), {})[f"{budget:g}"] = {
            "z": grid.to_numpy().round(4).tolist(),
            "rows": [f"L{layer}.H{head}" for layer, head in grid.index],
        }
    return out


def _interval(i: dict | None, percent: bool = False) -> str:
    if not i or i.get("point") is None:
        return "—"
    scale, fmt = (100, "{:.0f}%") if percent else (1, "{:.3f}")

    def f(v: float | None) -> str:
        return "—" if v is None else fmt.format(scale * v)

    return f"{f(i['point'])} [{f(i.get('low'))}, {f(i.get('high'))}]"


def comparison_rows(summary: Summary) -> list[dict]:
    """Per budget: the ratio and its call, the control, the gaps closed."""
    rows = []
    for v in summary.budgets:
        rows.append(
            {
                "budget": f"{v.budget:g}",
                "ratio": _interval(v.ratio.__dict__),
                "call": v.call,
                "decide": "—" if v.documents_to_decide is None else str(v.documents_to_decide),
                "p": _formatted(v.qnorm_vs_control.get("p_one_sided"), "{:.3g}"),
                "entropy": _interval(v.entropy_gap_closed.__dict__, percent=True),
                "oracle": _interval(v.oracle_gap_closed.__dict__, percent=True),
            }
        )
    return rows


def ratio_figure(summary: Summary) -> go.Figure:
    """The KL ratio qnorm / head_position per budget with its interval, the margin shaded."""
    fig = go.Figure()
    x = [v.budget for v in summary.budgets]
    point = [v.ratio.point for v in summary.budgets]
    fig.add_trace(
        go.Scatter(
            x=x, y=point, mode="markers", name="ratio",
            marker={"color": ARM_COLORS[PROPOSAL], "size": 9},
            error_y={
                "type": "data", "thickness": 1,
                "array": [(v.ratio.high or p) - p if p is not None else 0
                          for v, p in zip(summary.budgets, point, strict=True)],
                "arrayminus": [p - (v.ratio.low or p) if p is not None else 0
                               for v, p in zip(summary.budgets, point, strict=True)],
            },
            hovertemplate="budget %{x}<br>ratio %{y:.3f}<extra></extra>",
        )
    )  # fmt: skip
    m = summary.margin
    fig.add_hrect(y0=1 - m, y1=1 + m, fillcolor="#2ca02c", opacity=0.12, line_width=0)
    fig.add_hline(y=1, line_dash="dot", line_color="#555")
    fig.update_layout(
        title={"text": f"KL {PROPOSAL} / {RIVAL}, {100 * summary.ci_level:g}% CI, margin ±{m:g}"},
        template=TEMPLATE, xaxis_title="budget", yaxis_title="KL ratio", height=340,
        showlegend=False,
    )  # fmt: skip
    return fig


def _formatted(value: object, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, int | float) and np.isfinite(value) else "—"


def run_parts(config: dict, folder: Path) -> list[tuple[str, str]]:
    """model · corpus · context · windows · documents · device ... from config.json."""
    parts = labelled(
        flat_config(config),
        [
            ("model", "model"), ("corpus", "corpus"), ("ctx", "context"), ("device", "device"),
            ("dtype", "dtype"), ("sink", "sink"), ("recent", "recent"),
            ("skip_first", "skip first"), ("seed", "seed"),
        ],
    )  # fmt: skip
    windows = config.get("n_windows")
    if isinstance(windows, dict):
        parts.append(("windows", ", ".join(f"{k} {v}" for k, v in windows.items())))
    documents = config.get("documents")
    if isinstance(documents, dict):
        parts.append(("documents", ", ".join(f"{k} {len(v)}" for k, v in documents.items())))
    parts.append(("folder", folder.name))
    return parts


def budget_report_html(folder: str | Path) -> str:
    """The whole page as one string, from the folder alone."""
    layout = BudgetLayout(Path(folder))
    if not layout.root.is_dir():
        raise SpectraError(f"results folder {layout.root} does not exist.")
    curves = _read_csv(layout.curves, CURVE_COLUMNS)
    per_head = _read_csv(layout.per_head, PER_HEAD_COLUMNS)
    allocation = _read_csv(layout.allocation, ALLOCATION_COLUMNS)
    raw_summary, config = read_json_object(layout.summary), read_json_object(layout.config)
    summary = Summary.from_json(raw_summary)
    budgets = sorted(float(b) for b in per_head["budget"].unique())
    data = {
        "figures": {
            column: fig_json(quality_figure(curves, column, title))
            for column, title in QUALITY_FIGURES
        },
        "arms": [a for a in ARMS if a in set(per_head["arm"])],
        "budgets": [f"{b:g}" for b in budgets],
        "ratio": fig_json(ratio_figure(summary)),
        "heads": head_grids(per_head),
        "allocation": allocation_grids(allocation),
        "allocation_arms": [a for a in FITTED if POSITION in REGISTRY[a].cells],
        "initial_allocation": RIVAL,
        "initial": {"arm": PROPOSAL, "budget": f"{budgets[len(budgets) // 2]:g}"},
        "template": json.loads(go.Figure(layout={"template": TEMPLATE}).to_json())["layout"][
            "template"
        ],
    }
    table = curves.round(5).replace({np.nan: None})
    return render_page(
        "budget_report.html.j2",
        css=["report.css", "budget_report.css"],
        app_js="budget_report.js",
        data=data,
        model=str(flat_config(config).get("model", "")),
        run_parts=run_parts(config, layout.root),
        question=summary.question,
        verdict=summary.verdict,
        comparisons=comparison_rows(summary),
        rival=RIVAL,
        proposal=PROPOSAL,
        bound=BOUND,
        control=CONTROL,
        ceiling=CEILING,
        level=f"{100 * summary.ci_level:g}%",
        alpha=summary.alpha,
        margin=summary.margin,
        columns=CURVE_COLUMNS,
        rows=table.to_dict("records"),
        budgets_met=summary.budgets_met,
        by_source=summary.by_source,
        arms=ARMS,
        summary=raw_summary,
        config=config,
    )


def build_budget_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` (or `out`) from a Phase 2 results folder alone; return its path."""
    target = Path(out) if out is not None else BudgetLayout(Path(folder)).report
    write_text(target, budget_report_html(folder))
    return target
