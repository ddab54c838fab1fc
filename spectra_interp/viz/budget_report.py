"""A Phase 2 results folder -> one self-contained `report.html` (plotly.js inline).

The page holds the verdict, quality against keys kept (one line per arm, with document-bootstrap
intervals), the memory cost of GQA unions, and a per-head view of each arm's budget. Everything
comes from the folder (budget_curves.csv, per_head.csv, summary.json, config.json); no model is
loaded and the page fetches nothing. The page is `templates/budget_report.html.j2` with its
script and stylesheet beside it (and the sweep report's stylesheet).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from spectra_interp.budget.arms import ARMS, BOUND, CONTROL, DENSE, PROPOSAL, RIVAL
from spectra_interp.budget.curves import CURVE_COLUMNS, PER_HEAD_COLUMNS
from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import BudgetLayout
from spectra_interp.results.load import read_json_object
from spectra_interp.results.store import write_text
from spectra_interp.viz.figures import RED_BLUE, TEMPLATE
from spectra_interp.viz.page import fig_json, render_page
from spectra_interp.viz.provenance import flat_config, labelled

ARM_COLORS = {
    DENSE: "#000000",
    "uniform": "#7f7f7f",
    "head": "#8c564b",
    "head_position": "#1f77b4",
    "qnorm": "#d62728",
    "qnorm_shuffled": "#ff9896",
    "oracle_top_p": "#2ca02c",
    "sink_local": "#9467bd",
}
ARM_DASH = {CONTROL: "dash", BOUND: "dot", "sink_local": "dashdot"}
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
                line={"color": ARM_COLORS[arm], "dash": ARM_DASH.get(arm, "solid")},
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


def rule_grids(per_head: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Per budget, the qnorm rule's slope on log‖q‖ and its gain in R² over head_position, per
    head (each budget has its own rules)."""

    def grid(arm: str, budget: float, column: str) -> np.ndarray:
        rows = per_head[(per_head["arm"] == arm) & (per_head["budget"] == budget)]
        return rows.pivot(index="layer", columns="head", values=column).sort_index().to_numpy()

    def clean(a: np.ndarray) -> list:
        return np.where(np.isfinite(a), a.round(5), None).tolist()

    return {
        f"{b:g}": {
            "slope": clean(grid(PROPOSAL, b, "slope_log_qnorm")),
            "r2_gain": clean(grid(PROPOSAL, b, "fit_r2") - grid(RIVAL, b, "fit_r2")),
        }
        for b in sorted(per_head["budget"].unique())
    }


def comparison_rows(summary: dict) -> list[dict]:
    """Per budget: qnorm against head_position, and the gap to the oracle closed."""
    rows = []
    for c in summary.get("comparisons", []):
        test = c.get(f"{PROPOSAL}_vs_{RIVAL}", {})
        closed = c.get(f"{PROPOSAL}_gap_closed", {})
        control = c.get(f"{CONTROL}_gap_closed", {})

        def pct(d: dict, key: str = "share") -> str:
            v = d.get(key)
            return "—" if v is None else f"{100 * v:.0f}%"

        rows.append(
            {
                "budget": f"{c.get('budget', float('nan')):g}",
                "diff": _num(test.get("kl_diff"), "{:+.2e}"),
                "p": _num(test.get("p_one_sided"), "{:.3g}"),
                "beats": bool(test.get("beats")),
                "closed": f"{pct(closed)} [{pct(closed, 'ci_low')}, {pct(closed, 'ci_high')}]",
                "control": pct(control),
            }
        )
    return rows


def _num(value: object, fmt: str) -> str:
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
    summary, config = read_json_object(layout.summary), read_json_object(layout.config)
    budgets = sorted(float(b) for b in per_head["budget"].unique())
    data = {
        "figures": {
            column: fig_json(quality_figure(curves, column, title))
            for column, title in QUALITY_FIGURES
        },
        "arms": [a for a in ARMS if a in set(per_head["arm"])],
        "budgets": [f"{b:g}" for b in budgets],
        "heads": head_grids(per_head),
        "rules": rule_grids(per_head),
        "initial": {"arm": PROPOSAL, "budget": f"{budgets[len(budgets) // 2]:g}"},
        "diverging": RED_BLUE,
        "template": fig_json(go.Figure(layout={"template": TEMPLATE}))["layout"]["template"],
    }
    table = curves.round(5).replace({np.nan: None})
    return render_page(
        "budget_report.html.j2",
        css=["report.css", "budget_report.css"],
        app_js="budget_report.js",
        data=data,
        model=str(flat_config(config).get("model", "")),
        run_parts=run_parts(config, layout.root),
        question=summary.get("question"),
        verdict=summary.get("verdict", "summary.json holds no verdict."),
        comparisons=comparison_rows(summary),
        rival=RIVAL,
        proposal=PROPOSAL,
        bound=BOUND,
        control=CONTROL,
        level=flat_config(config).get("alpha", "n/a"),
        columns=CURVE_COLUMNS,
        rows=table.to_dict("records"),
        budgets_met=summary.get("budgets_met", {}),
        moved=summary.get("qnorm_read_in_masked_pass", {}),
        summary=summary,
        config=config,
    )


def build_budget_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` (or `out`) from a Phase 2 results folder alone; return its path."""
    target = Path(out) if out is not None else BudgetLayout(Path(folder)).report
    write_text(target, budget_report_html(folder))
    return target
