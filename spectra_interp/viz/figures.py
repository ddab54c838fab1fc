"""Plotly figures of the per-head results: pure functions from frames and arrays to figures.

The per-head figures (density, position) are built in two steps, summary then figure, so the
report can precompute small summaries for every head and swap them into one figure in the
browser: `density_traces` / `position_traces` give exactly the arrays the figure functions use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from jaxtyping import Bool, Float, Int
from plotly.colors import diverging
from plotly.subplots import make_subplots

from spectra_interp.stats.columns import CI
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.degenerate import measurable

# Every figure's look in one registered template: plotly_white with the pages' margins, titles
# left-aligned in 14 px (long titles stay clear of the toolbar on the right).
TEMPLATE = "spectra"
pio.templates[TEMPLATE] = go.layout.Template(pio.templates["plotly_white"]).update(
    layout={
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
        "title": {"x": 0, "xref": "paper", "xanchor": "left", "font": {"size": 14}},
        "height": 380,
    }
)
NEGATIVE = "#c0392b"
POSITIVE = "#2e6da4"
# The two per-query quantities, drawn in the same colours in every figure that shows both.
QNORM_COLOR, ENTROPY_COLOR = POSITIVE, "#16a085"
CONTROL_COLORS = {"trained": "#34495e", "permutation": "#e67e22", "random init": "#8e44ad"}


def _as_float(value: object) -> float:
    """A float, or NaN for anything missing or non-numeric."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return out


def bool_column(table: pd.DataFrame, name: str) -> Bool[np.ndarray, " row"]:
    """A yes/no column as booleans (CSV round-trips tolerated; a missing column is all False)."""
    if name not in table:
        return np.zeros(len(table), dtype=bool)
    col = table[name]
    if col.dtype == bool:
        return col.to_numpy()
    return col.astype(str).str.strip().str.lower().isin(["true", "1", "yes"]).to_numpy()


def passes_mask(table: pd.DataFrame) -> Bool[np.ndarray, " row"]:
    """The `passes` column as booleans."""
    return bool_column(table, "passes")


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


def format_number(value: object) -> str:
    """How every statistic is written on the page: tiny values in scientific notation, a float
    that underflowed to 0 as "< 1e-300", integers with separators, the rest to 4 digits."""
    if value is None or isinstance(value, str):
        return "—" if value is None else value
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    v = float(value)  # type: ignore[arg-type]
    if not np.isfinite(v):
        return "—"
    if float(v).is_integer() and abs(v) < 1e15 and not isinstance(value, float | np.floating):
        return f"{int(v):,}"
    if v == 0:
        return "< 1e-300"
    if abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def head_title(
    row: Mapping[str, object], model: str = "trained", sampled: int | None = None
) -> str:
    """One line naming a head with its r (the random-init model's own r for model
    "random_init"), interval, q-value and how many tokens the figure shows."""
    parts = [f"L{int(_as_float(row.get('layer')))} H{int(_as_float(row.get('head')))}"]
    if model == "random_init":
        parts.append(f"random init · r = {_as_float(row.get('random_init_r')):+.3f}")
    else:
        r = _as_float(row.get("pearson_r"))
        if np.isfinite(r):
            text = f"r = {r:+.3f}"
            lo, hi = _as_float(row.get("ci_low")), _as_float(row.get("ci_high"))
            if np.isfinite(lo) and np.isfinite(hi):
                text += f" [{lo:+.3f}, {hi:+.3f}]"
            parts.append(text)
        q = _as_float(row.get("q_fdr"))
        if np.isfinite(q):
            parts.append(f"q = {format_number(q)}")
    n = _as_float(row.get("n_tokens"))
    if sampled is not None and np.isfinite(n):
        parts.append(f"{sampled:,} sampled of {int(n):,} tokens")
    elif np.isfinite(n):
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
        height=420,
        margin={"t": 72},
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
    for row, base, color, name in ((1, 0, QNORM_COLOR, "‖q‖"), (2, 3, ENTROPY_COLOR, "H")):
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
        margin={"t": 72},
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


# Diverging scales as explicit colour lists, low values red and high values blue (as the
# "passing, r < 0" and "r > 0" bars), so plotly.js never substitutes its own reversed RdBu.
RED_BLUE = [[i / (len(diverging.RdBu) - 1), c] for i, c in enumerate(diverging.RdBu)]
PURPLE_ORANGE = [[i / (len(diverging.PuOr) - 1), c] for i, c in enumerate(diverging.PuOr)]


@dataclass(frozen=True)
class Metric:
    """One colouring of the layer x head map: a fixed range [zmin, zmax] centred on `zmid`
    (the same colours for the same value in every run and after every switch). A head outside
    the range is painted in the end colour and marked ▲ (above) or ▼ (below)."""

    label: str
    short: str
    zmin: float
    zmax: float
    zmid: float = 0.0
    colorscale: tuple = tuple(map(tuple, RED_BLUE))

    def scale_note(self) -> str:
        """The range in words, as the page prints it under the map."""
        return (
            f"{self.label}: colour range {self.zmin:g} to {self.zmax:g}, centred on "
            f"{self.zmid:g}; ▲ above and ▼ below the range."
        )


# The heatmap's metric switch: column (or derived name) -> how to colour it.
HEATMAP_METRICS: dict[str, Metric] = {
    "pearson_r": Metric("Pearson r(‖q‖, H)", "r", -1, 1),
    "partial_r_position": Metric("partial r given keys seen", "partial r", -1, 1),
    "pearson_r_norm_entropy": Metric("r with H / log(keys seen)", "r", -1, 1),
    "random_init_r": Metric("random-init r", "r", -1, 1),
    "trained_minus_random": Metric("trained r − random-init r", "Δr", -1, 1),
    "delta_r2": Metric("delta R² beyond position (signed)", "ΔR²", -0.5, 0.5),
    "temperature_share": Metric(
        "temperature share (1: rescaling alone)",
        "share",
        -1,
        3,
        1.0,
        tuple(map(tuple, PURPLE_ORANGE)),
    ),  # fmt: skip
    "r_log_keff": Metric("r(log‖q‖, log k_eff)", "r", -1, 1),
}


def metric_values(table: pd.DataFrame, name: str) -> np.ndarray:
    """A heatmap metric's value per row of the table (NaN where the run has no such column)."""
    if name == "trained_minus_random":
        return _col(table, "pearson_r") - _col(table, "random_init_r")
    return _col(table, name)


def _col(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)


def grid(table: pd.DataFrame, values: np.ndarray, fill: object = np.nan) -> np.ndarray:
    """Row values -> [head, layer] grid (the heatmap's orientation)."""
    layers = np.sort(table["layer"].unique())
    heads = np.sort(table["head"].unique())
    out = np.full((len(heads), len(layers)), fill, dtype=np.asarray(values).dtype)
    out[np.searchsorted(heads, table["head"]), np.searchsorted(layers, table["layer"])] = values
    return out


def out_of_range(table: pd.DataFrame, name: str) -> dict[str, list]:
    """The heads whose metric lies outside its colour range: x (layer), y (head), the marker
    symbol (▲ above, ▼ below) and a hover line with the value."""
    metric = HEATMAP_METRICS[name]
    v = metric_values(table, name)
    above, below = v > metric.zmax, v < metric.zmin
    keep = above | below
    return {
        "x": table["layer"].to_numpy()[keep].tolist(),
        "y": table["head"].to_numpy()[keep].tolist(),
        "symbol": np.where(above[keep], "triangle-up", "triangle-down").tolist(),
        "text": [
            f"L{int(a)} H{int(b)}: {metric.label} = {format_number(x)}, "
            f"{'above' if x > metric.zmax else 'below'} the colour range"
            for a, b, x in zip(
                table["layer"].to_numpy()[keep], table["head"].to_numpy()[keep], v[keep],
                strict=True,
            )
        ],
    }  # fmt: skip


HOVER_COLUMNS = ("pearson_r", "ci_low", "ci_high", "q_fdr", "partial_r_position", "n_tokens")


def hover_text(table: pd.DataFrame) -> np.ndarray:
    """Each head's hover lines, numbers written by `format_number`."""
    passing = passes_mask(table)
    lines = []
    for i, row in enumerate(table.to_dict("records")):
        parts = [f"L{int(row['layer'])} H{int(row['head'])}"]
        for name in HOVER_COLUMNS:
            if name in row:
                parts.append(f"{name} = {format_number(row[name])}")
        parts.append("passes" if passing[i] else "does not pass")
        lines.append("<br>".join(parts))
    return grid(table, np.array(lines, dtype=object), "")


def heatmap_hover(metric: Metric) -> str:
    """The heatmap's hover template: the head's numbers, then the coloured metric by name."""
    return f"%{{text}}<br><b>{metric.label} = %{{z:.4g}}</b><extra></extra>"


def heatmap_title(metric: Metric) -> str:
    return f"{metric.label} per head · outlined: passes (trained model)"


def head_heatmap(table: pd.DataFrame, value: str = "pearson_r") -> go.Figure:
    """Layer x head map of a metric (`HEATMAP_METRICS`) on its fixed colour range, heads outside
    the range marked ▲/▼; passing heads are outlined. Traces: [map, outlines, out-of-range]."""
    metric = HEATMAP_METRICS[value]
    layers = np.sort(table["layer"].unique())
    heads = np.sort(table["head"].unique())
    passing = passes_mask(table)
    marks = out_of_range(table, value)
    fig = go.Figure(
        go.Heatmap(
            z=grid(table, metric_values(table, value)),
            x=layers,
            y=heads,
            text=hover_text(table).tolist(),
            colorscale=[list(c) for c in metric.colorscale],
            zmid=metric.zmid,
            zmin=metric.zmin,
            zmax=metric.zmax,
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": metric.short}, "thickness": 14},
            hovertemplate=heatmap_hover(metric),
            name=metric.label,
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
    fig.add_trace(
        go.Scatter(
            x=marks["x"],
            y=marks["y"],
            text=marks["text"],
            mode="markers",
            marker={"symbol": marks["symbol"], "size": 9, "color": "#f1c40f",
                    "line": {"width": 1, "color": "black"}},
            name="outside the colour range",
            hovertemplate="%{text}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_layout(
        template=TEMPLATE,
        title={"text": heatmap_title(metric)},
        xaxis={
            "title": {"text": "layer"},
            "dtick": 1 if len(layers) <= 40 else None,
            "tickangle": 0,
            "tickfont": {"size": 10},
            "range": [float(layers.min()) - 0.5, float(layers.max()) + 0.5],
        },
        yaxis={
            "title": {"text": "head"},
            "dtick": 1 if len(heads) <= 40 else None,
            "range": [float(heads.max()) + 0.5, float(heads.min()) - 0.5],
        },
        height=int(min(900, max(320, 120 + 32 * len(heads)))),
        showlegend=False,
        plot_bgcolor="#dddddd",
    )
    return fig


def uncertainty_figure(table: pd.DataFrame, criteria: Criteria | None = None) -> go.Figure:
    """Every head's r with its cluster-bootstrap interval, sorted, with the pass threshold."""
    table = measurable(table)  # degenerate heads have no statistics to show
    criteria = criteria or Criteria()
    order = np.argsort(_col(table, "pearson_r"))
    t = table.iloc[order]
    r = _col(t, "pearson_r")
    passing = passes_mask(t)
    labels = _head_labels(t)
    fig = go.Figure()
    for mask, name, color in (
        (passing, "passes", NEGATIVE),
        (~passing, "does not pass", "#95a5a6"),
    ):
        fig.add_trace(
            go.Scatter(
                x=np.arange(len(t))[mask],
                y=r[mask],
                mode="markers",
                name=name,
                marker={"color": color, "size": 5},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (_col(t, "ci_high") - r)[mask],
                    "arrayminus": (r - _col(t, "ci_low"))[mask],
                    "thickness": 1,
                    "width": 0,
                    "color": color,
                },
                text=np.array(labels)[mask],
                hovertemplate="%{text}: r = %{y:.3f}<extra></extra>",
            )
        )
    for y in (-criteria.r_threshold, criteria.r_threshold):
        fig.add_hline(y=y, line={"dash": "dot", "color": "#555"})
    fig.update_layout(
        template=TEMPLATE,
        title={"text": f"r per head with its {CI} cluster-bootstrap interval, sorted"},
        xaxis={"title": {"text": "heads, by r"}, "showticklabels": False},
        yaxis={"title": {"text": "Pearson r"}, "range": [-1, 1]},
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return fig


def heads_needed(criteria: Criteria, n_heads: int) -> int:
    """The fewest passing heads whose share of `n_heads` reaches `criteria.min_share`."""
    if n_heads == 0:
        return 0
    k = int(np.floor(criteria.min_share * n_heads))
    while k / n_heads < criteria.min_share:
        k += 1
    return k


def robustness_counts(
    table: pd.DataFrame, criteria: Criteria, cutoffs: np.ndarray | None = None
) -> pd.DataFrame:
    """Heads passing at each |r| cutoff (q cut as recorded): columns cutoff, heads."""
    table = measurable(table)  # degenerate heads have no statistics to show
    cutoffs = np.round(np.arange(0.30, 0.701, 0.05), 2) if cutoffs is None else cutoffs
    r, q = _col(table, "pearson_r"), _col(table, "q_fdr")
    counts = [int(replace(criteria, r_threshold=float(c)).passes(r, q).sum()) for c in cutoffs]
    return pd.DataFrame({"cutoff": np.asarray(cutoffs, dtype=np.float64), "heads": counts})


def robustness_figure(
    table: pd.DataFrame, criteria: Criteria | None = None, cutoffs: np.ndarray | None = None
) -> go.Figure:
    """Heads passing against the |r| cutoff (q cut as recorded), with the count the share
    criterion needs: up to which cutoff the count criterion holds."""
    criteria = criteria or Criteria()
    counts = robustness_counts(table, criteria, cutoffs)
    needed = heads_needed(criteria, len(table))
    fig = go.Figure(
        go.Scatter(
            x=counts["cutoff"],
            y=counts["heads"],
            mode="lines+markers",
            line={"color": NEGATIVE},
            name="heads passing",
            hovertemplate="|r| ≥ %{x:.2f}: %{y} heads<extra></extra>",
        )
    )
    fig.add_hline(
        y=needed,
        line={"dash": "dash", "color": "#27ae60"},
        annotation_text=f"needed: {needed} of {len(table)} ({criteria.min_share:.0%})",
        annotation_position="bottom left",
    )
    fig.add_vline(x=criteria.r_threshold, line={"dash": "dot", "color": "#555"})
    holding = counts[counts["heads"] >= needed]
    if not holding.empty:
        last = holding.iloc[-1]
        fig.add_trace(
            go.Scatter(
                x=[last["cutoff"]],
                y=[last["heads"]],
                mode="markers+text",
                marker={"size": 12, "symbol": "circle-open", "color": "#27ae60",
                        "line": {"width": 2}},
                text=[f"holds up to |r| ≥ {last['cutoff']:.2f}"],
                textposition="top left"
                if last["cutoff"] > counts["cutoff"].median()
                else "top right",
                name="last cutoff that holds",
                hovertemplate="the count criterion holds up to |r| ≥ %{x:.2f}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        template=TEMPLATE,
        title={"text": f"heads passing against the |r| cutoff (q < {criteria.fdr})"},
        xaxis={"title": {"text": "|r| cutoff"}},
        yaxis={"title": {"text": "heads passing"}, "rangemode": "tozero"},
        showlegend=False,
    )
    return fig


def _head_labels(table: pd.DataFrame) -> list[str]:
    return [f"L{int(a)} H{int(b)}" for a, b in zip(table["layer"], table["head"], strict=True)]


def _diagonal_scatter(
    table: pd.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    marker: dict,
    names: tuple[str, str],
    title: str,
    span: tuple[float, float],
) -> go.Figure:
    """One point per head, y against x, with the diagonal y = x over `span`."""
    fig = go.Figure(
        [
            go.Scatter(
                x=x,
                y=y,
                mode="markers",
                marker=marker,
                text=_head_labels(table),
                hovertemplate=f"%{{text}}<br>{names[0]} = %{{x:.3f}}<br>{names[1]} = %{{y:.3f}}"
                "<extra></extra>",
            ),
            go.Scatter(
                x=list(span),
                y=list(span),
                mode="lines",
                line={"dash": "dot", "color": "#999"},
                hoverinfo="skip",
            ),
        ]
    )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title},
        xaxis={"title": {"text": names[0]}},
        yaxis={"title": {"text": names[1]}},
        showlegend=False,
    )
    return fig


def random_init_scatter(table: pd.DataFrame) -> go.Figure:
    """Every head's trained r against the same head's random-init r: what training added.
    Heads that pass (trained model) and those that do not are separate, named traces."""
    table = measurable(table)  # degenerate heads have no statistics to show
    x, y = _col(table, "random_init_r"), _col(table, "pearson_r")
    passing = passes_mask(table)
    labels = np.array(_head_labels(table), dtype=object)
    fig = go.Figure()
    for mask, name, color in (
        (passing, "passes (trained model)", NEGATIVE),
        (~passing, "does not pass", "#95a5a6"),
    ):
        fig.add_trace(
            go.Scatter(
                x=x[mask], y=y[mask], mode="markers", name=name,
                marker={"color": color, "size": 6}, text=labels[mask],
                hovertemplate="%{text}<br>random-init r = %{x:.3f}<br>trained r = %{y:.3f}"
                "<extra></extra>",
            )
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=[-1, 1], y=[-1, 1], mode="lines", name="diagonal: no change",
            line={"dash": "dot", "color": "#999"}, hoverinfo="skip",
        )
    )  # fmt: skip
    fig.update_layout(
        template=TEMPLATE,
        title={"text": "trained r against random-init r, per head"},
        xaxis={"title": {"text": "random-init r"}, "range": [-1.05, 1.05]},
        yaxis={"title": {"text": "trained r"}, "range": [-1.05, 1.05]},
        legend={"orientation": "h", "y": -0.2, "x": 0},
        margin={"b": 90},
    )
    return fig


def gain_scatter(table: pd.DataFrame) -> go.Figure:
    """Observed slope dH/dlog‖q‖ against the causal gain dH/dlog(alpha) per head: on the
    diagonal, rescaling the query explains the whole relation (temperature share 1)."""
    table = measurable(table)  # degenerate heads have no statistics to show
    x, y = _col(table, "gain_entropy"), _col(table, "slope_obs")
    ok = np.isfinite(x) & np.isfinite(y)
    lo = float(np.min(np.r_[x[ok], y[ok], 0.0]))
    hi = float(np.max(np.r_[x[ok], y[ok], 0.0]))
    marker = {
        "color": _col(table, "layer"),
        "colorscale": "Viridis",
        "size": 6,
        "colorbar": {"title": {"text": "layer"}},
    }
    return _diagonal_scatter(
        table,
        x,
        y,
        marker,
        ("gain dH/dlog(alpha) at alpha = 1 (nats)", "observed dH/dlog‖q‖ (nats)"),
        "observed slope vs causal gain per head (diagonal: temperature only)",
        (lo, hi),
    )


def alpha_curves(frame: pd.DataFrame, heads: list[tuple[int, int]], title: str = "") -> go.Figure:
    """Mean H of the sampled queries against the query scale alpha, one line per head."""
    fig = go.Figure()
    for layer, head in heads:
        g = frame[(frame["layer"] == layer) & (frame["head"] == head)].sort_values("scale")
        fig.add_trace(
            go.Scatter(
                x=g["scale"],
                y=g["mean_entropy"],
                mode="lines+markers",
                name=f"L{layer} H{head}",
                hovertemplate=f"L{layer} H{head}<br>alpha = %{{x:.3f}}<br>mean H = %{{y:.3f}}"
                "<extra></extra>",
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or "H with the query scaled by alpha"},
        xaxis={"title": {"text": "alpha (query scale)"}, "type": "log"},
        yaxis={"title": {"text": "mean H (nats)"}},
    )
    return fig


def r_distribution(table: pd.DataFrame, criteria: Criteria | None = None) -> go.Figure:
    """Per layer, r of the trained model beside the permutation and random-init controls, with
    the pass threshold as dotted lines."""
    table = measurable(table)  # degenerate heads have no statistics to show
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
    table = measurable(table)  # degenerate heads have no statistics to show
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
        yaxis={
            "title": {"text": "passing heads"},
            "range": [0, max(1, int(counts.heads.max()) if len(counts) else 0)],
        },
        height=400,
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return fig


def pattern_heatmap(
    token_strs: list[str], pattern: Float[np.ndarray, "query key"], title: str = ""
) -> go.Figure:
    """One head's attention among a few tokens as a plain heatmap (a static picture; the
    circuitsvis view is the interactive one)."""
    tokens = [t.replace("\n", "⏎") for t in token_strs]
    p = np.asarray(pattern, dtype=np.float64)
    shown = np.where(np.tril(np.ones_like(p)) > 0, p, np.nan)
    hover = [
        [f"{tokens[i]!r} → {tokens[j]!r}" for j in range(len(tokens))] for i in range(len(tokens))
    ]
    fig = go.Figure(
        go.Heatmap(
            z=shown,
            colorscale="Blues",
            zmin=0,
            text=hover,
            hovertemplate="%{text}: %{z:.3f}<extra></extra>",
            colorbar={"title": {"text": "attention"}},
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title},
        xaxis={"title": {"text": "key"}},
        yaxis={"title": {"text": "query"}, "autorange": "reversed"},
        height=480,
    )
    return fig


def token_figure(
    token_strs: list[str],
    qnorm: Float[np.ndarray, " pos"],
    entropy: Float[np.ndarray, " pos"],
    title: str = "",
) -> go.Figure:
    """‖q‖ (top) and H (bottom) token by token on one text, the tokens along the axis: both
    numbers side by side, where a coloured-token view shows one at a time."""
    if not len(token_strs) == len(qnorm) == len(entropy):
        raise ValueError(f"{len(token_strs)} tokens, {len(qnorm)} ‖q‖, {len(entropy)} H values.")
    labels = [f"{i}:{t.replace(chr(10), '⏎')}" for i, t in enumerate(token_strs)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for row, values, color, name in (
        (1, qnorm, QNORM_COLOR, "‖q‖"),
        (2, entropy, ENTROPY_COLOR, "H"),
    ):
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=np.asarray(values, dtype=np.float64),
                mode="lines+markers",
                line={"color": color},
                name=name,
                hovertemplate=f"%{{x}}<br>{name} = %{{y:.3f}}<extra></extra>",
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(title_text=name, row=row, col=1)
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title},
        height=420,
        showlegend=False,
        margin={"l": 60, "r": 20, "t": 50, "b": 80},
    )
    return fig
