"""Plotly figures of the per-head results: pure functions from frames and arrays to figures.

The per-head figures (density, position) are built in two steps, summary then figure, so the
report can precompute small summaries for every head and swap them into one figure in the
browser: `density_traces` / `position_traces` give exactly the arrays the figure functions use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots

from spectra_interp.stats.criteria import Criteria

TEMPLATE = "plotly_white"
NEGATIVE = "#c0392b"
POSITIVE = "#2e6da4"
CONTROL_COLORS = {"trained": "#34495e", "permutation": "#e67e22", "random init": "#8e44ad"}
R_COLUMNS = {
    "pearson_r": "Pearson r",
    "pearson_r_log": "Pearson r (log ‖q‖)",
    "spearman_rho": "Spearman ρ",
    "partial_r_position": "partial r | position",
    "pearson_r_norm_entropy": "Pearson r (H / log n_keys)",
}


def _num(value: object) -> float:
    """A float, or NaN for anything missing or non-numeric."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return out


def passes_mask(table: pd.DataFrame) -> Int[np.ndarray, " row"]:
    """The `passes` column as booleans (CSV round-trips and missing columns tolerated)."""
    if "passes" not in table:
        return np.zeros(len(table), dtype=bool)
    col = table["passes"]
    if col.dtype == bool:
        return col.to_numpy()
    return col.astype(str).str.strip().str.lower().isin(["true", "1", "yes"]).to_numpy()


def sign_of(table: pd.DataFrame) -> Int[np.ndarray, " row"]:
    """Each head's sign as -1/0/+1, from `sign` (numbers or words) or else from `pearson_r`."""
    if "sign" in table:
        col = table["sign"]
        if pd.api.types.is_numeric_dtype(col):
            return np.sign(col.fillna(0).to_numpy()).astype(int)
        text = col.astype(str).str.strip().str.lower()
        neg = text.str.startswith(("neg", "-"))
        pos = text.str.startswith(("pos", "+"))
        return np.where(neg, -1, np.where(pos, 1, 0))
    if "pearson_r" in table:
        return np.sign(table["pearson_r"].fillna(0).to_numpy()).astype(int)
    return np.zeros(len(table), dtype=int)


def head_title(row: Mapping[str, object]) -> str:
    """One line naming a head with its r, interval, q-value and n (whatever the row has)."""
    parts = [f"L{int(_num(row.get('layer')))} H{int(_num(row.get('head')))}"]
    r = _num(row.get("pearson_r"))
    if np.isfinite(r):
        text = f"r = {r:+.3f}"
        lo, hi = _num(row.get("ci_low")), _num(row.get("ci_high"))
        if np.isfinite(lo) and np.isfinite(hi):
            text += f" [{lo:+.3f}, {hi:+.3f}]"
        parts.append(text)
    q = _num(row.get("q_fdr"))
    if np.isfinite(q):
        parts.append(f"q = {q:.2g}")
    n = _num(row.get("n_tokens"))
    if np.isfinite(n):
        parts.append(f"n = {int(n):,}")
    return " · ".join(parts)


# --- ‖q‖ against H for one head -------------------------------------------------------------


@dataclass(frozen=True)
class Density:
    """A 2D histogram of (‖q‖, H) for one head and its least-squares line H = a·‖q‖ + b."""

    x_edges: Float[np.ndarray, " nx_plus_1"]
    y_edges: Float[np.ndarray, " ny_plus_1"]
    counts: Int[np.ndarray, "ny nx"]
    slope: float
    intercept: float
    n: int


def _edges(values: Float[np.ndarray, " n"], bins: int) -> Float[np.ndarray, " bins_plus_1"]:
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def density_summary(
    qnorm: Float[np.ndarray, " n"], entropy: Float[np.ndarray, " n"], bins: int = 40
) -> Density:
    """Bin the points so 100k of them draw as fast (and as legibly) as 1k."""
    x = np.asarray(qnorm, dtype=np.float64).ravel()
    y = np.asarray(entropy, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    x_edges, y_edges = _edges(x, bins), _edges(y, bins)
    counts, _, _ = np.histogram2d(y, x, bins=[y_edges, x_edges])
    slope = intercept = float("nan")
    if x.size >= 2 and x.std() > 0:
        slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
    return Density(x_edges, y_edges, counts.astype(np.int64), slope, intercept, int(x.size))


def density_traces(d: Density) -> list[dict[str, np.ndarray]]:
    """The data arrays of the density figure's traces: [heatmap, fit line]."""
    xc = (d.x_edges[:-1] + d.x_edges[1:]) / 2
    yc = (d.y_edges[:-1] + d.y_edges[1:]) / 2
    counts = d.counts
    z = np.where(counts > 0, np.log10(np.maximum(counts, 1)), np.nan)
    dtype = np.uint16 if counts.max(initial=0) < 2**16 else np.uint32
    x_line = _fit_span(d)
    y_line = d.slope * x_line + d.intercept
    return [
        {
            "x": xc.astype(np.float32),
            "y": yc.astype(np.float32),
            "z": z.astype(np.float32),
            "customdata": counts.astype(dtype),
        },
        {"x": x_line.astype(np.float32), "y": y_line.astype(np.float32)},
    ]


def _fit_span(d: Density) -> Float[np.ndarray, " 2"]:
    """The x range over which the fit line stays inside the plotted H range."""
    x0, x1 = float(d.x_edges[0]), float(d.x_edges[-1])
    if not np.isfinite(d.slope) or d.slope == 0:
        return np.array([x0, x1])
    ends = (d.y_edges[[0, -1]] - d.intercept) / d.slope
    lo, hi = max(x0, float(ends.min())), min(x1, float(ends.max()))
    return np.array([lo, hi] if lo < hi else [x0, x1])


COUNT_TICKS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000, 1000000]


def density_figure(d: Density, title: str = "") -> go.Figure:
    """‖q‖ against H as a log-count density, with the fit line."""
    heat, line = density_traces(d)
    fig = go.Figure(
        [
            go.Heatmap(
                **heat,
                colorscale="Viridis",
                colorbar={
                    "title": {"text": "tokens"},
                    "tickvals": np.log10(COUNT_TICKS).tolist(),
                    "ticktext": [f"{t:,}" for t in COUNT_TICKS],
                },
                hovertemplate="‖q‖ ≈ %{x:.2f}<br>H ≈ %{y:.2f}<br>tokens: %{customdata}"
                "<extra></extra>",
                name="density",
            ),
            go.Scatter(
                **line,
                mode="lines",
                line={"color": "#e74c3c", "width": 2},
                name="least squares",
                hovertemplate="fit<extra></extra>",
            ),
        ]
    )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title},
        xaxis_title="‖q‖",
        yaxis_title="H (nats)",
        showlegend=False,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        height=420,
    )
    return fig


def qnorm_entropy_figure(
    qnorm: Float[np.ndarray, " n"],
    entropy: Float[np.ndarray, " n"],
    title: str = "",
    bins: int = 40,
) -> go.Figure:
    """The density figure straight from the points of one head."""
    return density_figure(density_summary(qnorm, entropy, bins), title)


# --- ‖q‖ and H against position ------------------------------------------------------------


def position_profile(
    pos: Int[np.ndarray, " n"],
    qnorm: Float[np.ndarray, " n"],
    entropy: Float[np.ndarray, " n"],
    n_keys: Int[np.ndarray, " n"] | None = None,
    n_bins: int = 32,
) -> pd.DataFrame:
    """Mean and 10-90% band of ‖q‖ and H per position bin, with the ceiling log(n_keys)."""
    pos = np.asarray(pos, dtype=np.int64).ravel()
    keys = pos + 1 if n_keys is None else np.asarray(n_keys, dtype=np.int64).ravel()
    if pos.size == 0:
        return pd.DataFrame(
            columns=["pos", "n", "log_n_keys"]
            + [f"{v}_{s}" for v in ("qnorm", "entropy") for s in ("mean", "lo", "hi")]
        )
    width = max(1, int(np.ceil((pos.max() + 1) / n_bins)))
    which = pos // width
    frame = pd.DataFrame(
        {
            "bin": which,
            "pos": pos,
            "qnorm": np.asarray(qnorm, dtype=np.float64).ravel(),
            "entropy": np.asarray(entropy, dtype=np.float64).ravel(),
            "log_n_keys": np.log(np.maximum(keys, 1)),
        }
    )
    g = frame.groupby("bin", sort=True)
    out = pd.DataFrame({"pos": g.pos.mean(), "n": g.size(), "log_n_keys": g.log_n_keys.mean()})
    for v in ("qnorm", "entropy"):
        out[f"{v}_mean"] = g[v].mean()
        out[f"{v}_lo"] = g[v].quantile(0.1)
        out[f"{v}_hi"] = g[v].quantile(0.9)
    return out.reset_index(drop=True)


def position_traces(profile: pd.DataFrame) -> list[dict[str, np.ndarray]]:
    """The data arrays of the position figure's traces, in the figure's order."""
    x = profile["pos"].to_numpy(np.float32)
    col = {c: profile[c].to_numpy(np.float32) for c in profile.columns}
    return [
        {"x": x, "y": col["qnorm_lo"]},
        {"x": x, "y": col["qnorm_hi"]},
        {"x": x, "y": col["qnorm_mean"]},
        {"x": x, "y": col["entropy_lo"]},
        {"x": x, "y": col["entropy_hi"]},
        {"x": x, "y": col["entropy_mean"]},
        {"x": x, "y": col["log_n_keys"]},
    ]


def position_figure(profile: pd.DataFrame, title: str = "") -> go.Figure:
    """‖q‖ (top) and H (bottom) against position: the position confound, made visible."""
    t = position_traces(profile)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    band = {"mode": "lines", "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip"}
    for row, base, color, name in ((1, 0, "#2e6da4", "‖q‖"), (2, 3, "#16a085", "H")):
        fig.add_trace(go.Scatter(**t[base], **band), row=row, col=1)
        fig.add_trace(
            go.Scatter(**t[base + 1], **band, fill="tonexty", fillcolor=_fade(color)),
            row=row,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                **t[base + 2],
                mode="lines",
                line={"color": color, "width": 2},
                name=f"mean {name} (band: 10-90%)",
                hovertemplate=f"pos ≈ %{{x:.0f}}<br>mean {name} = %{{y:.3f}}<extra></extra>",
            ),
            row=row,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            **t[6],
            mode="lines",
            line={"color": "#7f8c8d", "dash": "dash"},
            name="log(keys seen): max H",
            hovertemplate="pos ≈ %{x:.0f}<br>log n_keys = %{y:.3f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title},
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.18},
    )
    fig.update_yaxes(title_text="‖q‖", row=1, col=1)
    fig.update_yaxes(title_text="H (nats)", row=2, col=1)
    fig.update_xaxes(title_text="position", row=2, col=1)
    return fig


def _fade(hex_color: str, alpha: float = 0.25) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# --- the whole model -----------------------------------------------------------------------


def head_heatmap(table: pd.DataFrame, value: str = "pearson_r") -> go.Figure:
    """Layer x head map of a correlation, diverging around 0; passing heads are outlined."""
    layers = np.sort(table["layer"].unique())
    heads = np.sort(table["head"].unique())
    li = np.searchsorted(layers, table["layer"].to_numpy())
    hi = np.searchsorted(heads, table["head"].to_numpy())
    z = np.full((len(heads), len(layers)), np.nan)
    z[hi, li] = table[value].to_numpy(np.float64)
    fields = ["pearson_r", "ci_low", "ci_high", "q_fdr", "n_tokens"]
    custom = np.full((len(heads), len(layers), len(fields)), np.nan)
    for k, name in enumerate(fields):
        if name in table:
            custom[hi, li, k] = pd.to_numeric(table[name], errors="coerce").to_numpy()
    passing = passes_mask(table)
    text = np.full((len(heads), len(layers)), "", dtype=object)
    text[hi, li] = np.where(passing, "passes", "does not pass")
    label = R_COLUMNS.get(value, value)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=layers,
            y=heads,
            customdata=np.round(custom, 5).tolist(),
            text=text.tolist(),
            colorscale="RdBu",
            zmid=0,
            zmin=-1,
            zmax=1,
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": label}},
            hovertemplate=(
                f"layer %{{x}}, head %{{y}}<br>{label} = %{{z:.3f}}"
                "<br>Pearson r = %{customdata[0]:.3f} [%{customdata[1]:.3f}, %{customdata[2]:.3f}]"
                "<br>q (FDR) = %{customdata[3]:.2g}<br>n = %{customdata[4]:,}<br>%{text}"
                "<extra></extra>"
            ),
            name=label,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=table["layer"].to_numpy()[passing],
            y=table["head"].to_numpy()[passing],
            mode="markers",
            marker={"symbol": "square-open", "size": 14, "color": "black", "line": {"width": 2}},
            name="passes",
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": f"{label} per head (outlined: passes)"},
        xaxis={
            "title": {"text": "layer"},
            "dtick": 1 if len(layers) <= 40 else None,
            "range": [float(layers.min()) - 0.5, float(layers.max()) + 0.5],
        },
        yaxis={
            "title": {"text": "head"},
            "dtick": 1 if len(heads) <= 40 else None,
            "range": [float(heads.max()) + 0.5, float(heads.min()) - 0.5],
        },
        height=int(min(900, max(320, 120 + 32 * len(heads)))),
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        showlegend=False,
        plot_bgcolor="#dddddd",
    )
    return fig


def r_distribution(table: pd.DataFrame, criteria: Criteria | None = None) -> go.Figure:
    """Per layer, r of the trained model beside the permutation and random-init controls, with
    the pass threshold as dotted lines."""
    criteria = criteria or Criteria()
    series = [("pearson_r", "trained"), ("perm_r", "permutation"), ("random_init_r", "random init")]
    fig = go.Figure()
    for column, name in series:
        if column not in table:
            continue
        fig.add_trace(
            go.Box(
                x=table["layer"],
                y=pd.to_numeric(table[column], errors="coerce"),
                name=name,
                marker_color=CONTROL_COLORS[name],
                boxpoints="outliers",
                hovertemplate=f"{name}<br>layer %{{x}}<br>r = %{{y:.3f}}<extra></extra>",
            )
        )
    for y in (-criteria.r_threshold, criteria.r_threshold):
        fig.add_hline(y=y, line={"dash": "dot", "color": "#999"})
    fig.update_layout(
        template=TEMPLATE,
        title={"text": "r per layer: trained model and controls"},
        boxmode="group",
        xaxis={"title": {"text": "layer"}, "dtick": 1},
        yaxis={"title": {"text": "Pearson r"}, "range": [-1, 1]},
        height=400,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return fig


def passing_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Passing heads per layer, split by sign: columns layer, negative, positive, heads."""
    passing = passes_mask(table)
    sign = sign_of(table)
    frame = pd.DataFrame(
        {
            "layer": table["layer"].to_numpy(),
            "negative": passing & (sign < 0),
            "positive": passing & (sign > 0),
            "heads": 1,
        }
    )
    return frame.groupby("layer", as_index=False).sum().astype(int)


def verdict_figure(table: pd.DataFrame) -> go.Figure:
    """Passing heads per layer, negative and positive stacked: where the effect lives."""
    counts = passing_counts(table)
    neg, pos = int(counts.negative.sum()), int(counts.positive.sum())
    fig = go.Figure(
        [
            go.Bar(
                x=counts.layer,
                y=counts.negative,
                name="passing, r < 0",
                marker_color=NEGATIVE,
                hovertemplate="layer %{x}: %{y} heads with r < 0<extra></extra>",
            ),
            go.Bar(
                x=counts.layer,
                y=counts.positive,
                name="passing, r > 0",
                marker_color=POSITIVE,
                hovertemplate="layer %{x}: %{y} heads with r > 0<extra></extra>",
            ),
        ]
    )
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        title={"text": f"{neg + pos} of {len(table)} heads pass ({neg} negative, {pos} positive)"},
        xaxis={"title": {"text": "layer"}, "dtick": 1},
        yaxis={"title": {"text": "passing heads"}, "range": [0, max(1, int(counts.heads.max()))]},
        height=400,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return fig
