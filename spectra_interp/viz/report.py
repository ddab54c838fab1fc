"""A results folder -> one self-contained `report.html` (plotly.js and circuitsvis inline).

The page holds the verdict, the whole-model figures and a head explorer: a click on the
heatmap swaps that head's precomputed density, position curves and attention view into place.
Everything comes from the results folder; no model is loaded and the page fetches nothing.
The page itself is `templates/report.html.j2` with its stylesheet and script beside it.
"""

from __future__ import annotations

import base64
import html
import json
from functools import cache
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from spectra_interp.config import BudgetConfig
from spectra_interp.results import Results, load_results
from spectra_interp.results.load import AttentionSample
from spectra_interp.results.store import write_text
from spectra_interp.stats.columns import HEAD_COLUMNS
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.verdict import degenerate_lines
from spectra_interp.viz import figures
from spectra_interp.viz.attention import bundle_js

MET_KEYS = ("met", "passed", "pass", "passes", "ok", "satisfied", "success")
HEADLINE_KEYS = ("verdict", "conclusion", "headline", "message", "summary", "text")
SUPPORT_KEYS = ("all_criteria_met", "h1_supported", "supported", "success", "passed", "met")
TEXT_KEYS = ("description", "name", "criterion")


# --- data for the page ---------------------------------------------------------------------


def _typed(array: np.ndarray) -> dict[str, str]:
    """A numpy array as plotly.js' typed-array spec (base64), much smaller than a JSON list."""
    codes = {"float32": "f4", "float64": "f8", "uint8": "u1", "uint16": "u2", "uint32": "u4"}
    a = np.ascontiguousarray(array)
    spec = {"dtype": codes[a.dtype.name], "bdata": base64.b64encode(a.tobytes()).decode("ascii")}
    if a.ndim > 1:
        spec["shape"] = ",".join(str(n) for n in a.shape)
    return spec


def _patch(traces: list[dict[str, np.ndarray]], title: str) -> dict:
    return {"title": title, "traces": [{k: _typed(v) for k, v in t.items()} for t in traces]}


MODELS = {"trained": "trained", "random_init": "random init"}
# Panel resolution: 32 x 32 density bins and 32 position bins keep 2 models x 1000 heads small.
DENSITY_BINS = 32
POSITION_BINS = 32


def head_panels(
    results: Results, bins: int = DENSITY_BINS, n_pos_bins: int = POSITION_BINS
) -> tuple[dict[str, dict[str, dict]], dict[str, go.Figure]]:
    """Per model and head, the density and position summaries as patches; and figures to patch
    into. Titles say how many sampled tokens the panel shows of how many the head has."""
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
            panels[model][key] = {
                "density": _patch(figures.density_traces(density), f"‖q‖ vs H · {title}"),
                "position": _patch(
                    figures.position_traces(profile),
                    f"‖q‖ and H by position · L{layer} H{head} · {MODELS[str(model)]}",
                ),
            }
            if not templates:
                templates["density"] = figures.density_figure(density)
                templates["position"] = figures.position_figure(profile)
    return panels, templates


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


PATTERN_LEVELS = 255  # attention weights as uint8 steps of 1/255: plenty for a picture


def attention_payload(att: AttentionSample | None) -> dict | None:
    """The slices' patterns quantised to uint8 plus ‖q‖ and H."""
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
                "label": f"window {int(att.window_ids[i])}, tokens {int(att.starts[i])}"
                f"–{int(att.starts[i]) + t - 1}",
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
    """The heatmap's metric switch: every metric the table can colour the map with."""
    out = {}
    for name, metric in figures.HEATMAP_METRICS.items():
        values = figures.metric_values(table, name)
        if np.isfinite(values).any():
            z = figures.grid(table, values)
            out[name] = {
                "label": metric.label,
                "z": np.where(np.isfinite(z), z, None).tolist(),
                "zmin": metric.zmin,
                "zmax": metric.zmax,
                "colorscale": metric.colorscale,
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
    """Phase 2 reports of the same model beside this folder (results/adaptive-<model>-ctx*)."""
    model = str(flat_config(results.config).get("model", ""))
    if not model:
        return []
    found = sorted(results.path.parent.glob(f"{BudgetConfig.folder_name(model, '*')}/report.html"))
    return [{"name": p.parent.name, "href": f"../{p.parent.name}/report.html"} for p in found]


def initial_heads(table: pd.DataFrame, n: int = 5) -> list[tuple[int, int]]:
    """The heads shown first: passing heads by most negative r, then the rest by r."""
    if "pearson_r" not in table or table["pearson_r"].isna().all():
        return [(int(table["layer"].iloc[0]), int(table["head"].iloc[0]))]
    order = table.assign(_pass=~figures.passes_mask(table)).sort_values(["_pass", "pearson_r"])
    return [(int(r["layer"]), int(r["head"])) for _, r in order.head(n).iterrows()]


def initial_head(table: pd.DataFrame) -> tuple[int, int]:
    """The head shown first: the passing head with the most negative r, else the most negative."""
    return initial_heads(table, 1)[0]


# --- HTML pieces ---------------------------------------------------------------------------


def _fmt(value: object) -> str:
    return figures.format_number(value) if not isinstance(value, str) else value


def _badge(met: bool) -> str:
    return (
        '<span class="badge met">✓ met</span>'
        if met
        else '<span class="badge unmet">✗ not met</span>'
    )


def render_value(value: object, depth: int = 0) -> str:
    """Any JSON value as HTML: nested dicts become nested tables, booleans become badges."""
    e = html.escape
    if isinstance(value, dict):
        if not value:
            return "<em>empty</em>"
        rows = "".join(
            f"<tr><th>{e(str(k))}</th><td>{render_value(v, depth + 1)}</td></tr>"
            for k, v in value.items()
        )
        return f'<table class="kv depth{min(depth, 3)}">{rows}</table>'
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))
            head = "".join(f"<th>{e(str(c))}</th>" for c in cols)
            body = "".join(
                "<tr>" + "".join(f"<td>{render_value(v.get(c), depth + 1)}</td>" for c in cols)
                for v in value
            )
            return f'<table class="grid"><tr>{head}</tr>{body}</table>'
        return e(", ".join(_fmt(v) for v in value)) or "<em>none</em>"
    if isinstance(value, bool):
        return f'<span class="bool {"yes" if value else "no"}">{_fmt(value)}</span>'
    if value is None:
        return "—"
    return e(_fmt(value))


def _met_flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        for k in MET_KEYS:
            if isinstance(value.get(k), bool):
                return value[k]
    return None


def criteria_html(criteria: object) -> str:
    """The success criteria, one row each: name, met or not, and the numbers behind it."""
    items: list[tuple[str, object]]
    if isinstance(criteria, dict):
        items = list(criteria.items())
    elif isinstance(criteria, list):
        items = [
            (str(c.get("name", c.get("criterion", i))) if isinstance(c, dict) else str(i), c)
            for i, c in enumerate(criteria)
        ]
    else:
        return render_value(criteria)
    rows = []
    for name, value in items:
        met = _met_flag(value)
        detail, about = value, ""
        if isinstance(value, dict):
            detail = {k: v for k, v in value.items() if k not in MET_KEYS + TEXT_KEYS}
            if isinstance(value.get("description"), str):
                about = f'<div class="about">{html.escape(value["description"])}</div>'
        shown = "" if isinstance(detail, bool) else render_value(detail, 1)
        flag = _badge(met) if met is not None else ""
        rows.append(
            f"<tr><th>{html.escape(name.replace('_', ' '))}{about}</th>"
            f"<td>{flag}</td><td>{shown}</td></tr>"
        )
    return f'<table class="criteria">{"".join(rows)}</table>'


def headline(summary: dict, table: pd.DataFrame) -> str:
    """The verdict in one sentence, from summary.json if it says one, else from the table."""
    passing = figures.passes_mask(table)
    sign = figures.sign_of(table)
    n, n_pass = len(table), int(passing.sum())
    neg, pos = int((passing & (sign < 0)).sum()), int((passing & (sign > 0)).sum())
    counted = f"{n_pass} of {n} heads pass ({neg} with r < 0, {pos} with r > 0)."
    text = next((summary[k] for k in HEADLINE_KEYS if isinstance(summary.get(k), str)), None)
    support = next((summary[k] for k in SUPPORT_KEYS if isinstance(summary.get(k), bool)), None)
    key = next((k for k in SUPPORT_KEYS if isinstance(summary.get(k), bool)), "")
    parts = []
    if support is not None:
        if key == "all_criteria_met":
            word = "all success criteria met" if support else "success criteria not all met"
        else:
            word = f"{key.replace('_', ' ')}: {'yes' if support else 'no'}"
        parts.append(f'<span class="badge {"met" if support else "unmet"}">{word}</span>')
    if text:
        parts.append(html.escape(text))
    parts.append(html.escape(counted))
    return " ".join(parts)


def cards(table: pd.DataFrame, criteria: Criteria) -> list[tuple[str, str, str]]:
    """Headline numbers with their one-line meaning, computed from head_stats so they exist
    whatever the summary."""
    passing = figures.passes_mask(table)
    sign = figures.sign_of(table)
    out = [
        ("heads", f"{len(table):,}", "query heads measured: layers × query heads"),
        ("passing", f"{int(passing.sum()):,}", HEAD_COLUMNS["passes"]),
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


def controls_html(table: pd.DataFrame, summary: dict, criteria: Criteria) -> str:
    """How the trained model's r compares with the controls', from the table and the summary."""
    rows = []
    for column, name in (
        ("pearson_r", "trained model"),
        ("perm_r", "permutation control"),
        ("random_init_r", "random-init control"),
    ):
        if column not in table:
            continue
        r = pd.to_numeric(table[column], errors="coerce").abs()
        rows.append(
            f'<tr><th title="{html.escape(HEAD_COLUMNS.get(column, name))}">{name}</th>'
            f"<td>{r.median():.3f}</td><td>{r.max():.3f}</td>"
            f"<td>{int(criteria.strong(r).sum())}</td></tr>"
        )
    out = ""
    if rows:
        out += (
            '<table class="grid controls"><tr><th></th>'
            '<th title="median over heads of |r|">median |r|</th>'
            '<th title="largest |r| over heads">max |r|</th>'
            f'<th title="heads whose |r| reaches the pass threshold">heads with |r| ≥ '
            f"{criteria.r_threshold}</th></tr>{''.join(rows)}</table>"
        )
    if isinstance(summary.get("controls"), dict | list):
        out += render_value(summary["controls"])
    out = caveats_html(summary) + out
    return out or "<p><em>No control columns in this folder.</em></p>"


def caveats_html(summary: dict) -> str:
    """The random-init control's refusal and the heads left out as degenerate, as paragraphs."""
    notes = list(degenerate_lines(summary))
    control = (summary.get("controls") or {}).get("random_init") or {}
    if control.get("usable") is False:
        notes.insert(0, f"The random-init model cannot serve as a control: {control['reason']}.")
    return "".join(f'<p class="caveat"><strong>{html.escape(n)}</strong></p>' for n in notes)


def flat_config(config: dict) -> dict:
    """config.json's settings in one flat dict, whether they sit at the top or in sections.

    Later sections win: the resolved `environment` (device, dtype actually used) over the
    requested `config`, and the number of windows actually run over `max_windows`.
    """
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for section in ("identity", "config", "environment"):
        if isinstance(config.get(section), dict):
            flat.update({k: v for k, v in config[section].items() if not isinstance(v, dict)})
    if "n_windows" in config:
        flat["windows"] = config["n_windows"]
    return flat


def labelled(flat: dict, keys: list[tuple[str, str]]) -> list[str]:
    """`<b>label</b> value` for each (key, label) whose key the flat config holds as a scalar:
    the parts of a page's run line."""
    return [
        f"<b>{html.escape(label)}</b> {html.escape(_fmt(flat[k]))}"
        for k, label in keys
        if k in flat and not isinstance(flat[k], dict | list)
    ]


def run_line(config: dict, results: Results) -> str:
    """model · corpus · context · windows · device ... from config.json, whatever it has."""
    config = flat_config(config)
    if "windows" not in config and "max_windows" in config:
        config["windows"] = config["max_windows"]
    keys = [
        ("model", "model"),
        ("corpus", "corpus"),
        ("ctx", "context"),
        ("windows", "windows"),
        ("device", "device"),
        ("dtype", "dtype"),
        ("method", "method"),
        ("skip_first", "skip first"),
        ("seed", "seed"),
    ]
    parts = labelled(config, keys)
    if isinstance(config.get("controls"), list):
        parts.append(f"<b>controls</b> {html.escape(', '.join(map(str, config['controls'])))}")
    commit = config.get("git_commit") or config.get("commit")
    if isinstance(commit, str):
        parts.append(f"<b>commit</b> {html.escape(commit[:10])}")
    parts.append(f"<b>folder</b> {html.escape(results.path.name)}")
    return " · ".join(parts)


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
                    "q": _fmt(float(row["q_fdr"])) if "q_fdr" in row.index else "—",
                    "passes": bool(passing[idx]),
                }
            )
        return out

    ordered = table.sort_values("pearson_r")
    return [
        ("Most negative r", rows(ordered.head(n))),
        ("Most positive r", rows(ordered.tail(n).iloc[::-1])),
    ]


def _fig_json(fig: go.Figure) -> dict:
    return json.loads(fig.to_json())


def json_for_script(value: object) -> str:
    """JSON that can sit inside a <script> element."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


@cache
def template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("spectra_interp.viz", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def asset(name: str) -> Markup:
    env = template_environment()
    return Markup(env.loader.get_source(env, name)[0])


def report_html(results: Results) -> str:
    """The whole page as one string."""
    table = results.head_stats
    criteria = results.criteria
    panels, templates = head_panels(results)
    strongest = initial_heads(table)
    alpha = results.alpha_response
    data = {
        "layers": [int(v) for v in np.sort(table["layer"].unique())],
        "heads": [int(v) for v in np.sort(table["head"].unique())],
        "rows": rows_payload(table),
        "glossary": HEAD_COLUMNS,
        "metrics": metrics_payload(table),
        "panels": panels,
        "models": {k: v for k, v in MODELS.items() if k in panels},
        "templates": {k: _fig_json(v) for k, v in templates.items()},
        "figures": {
            "heatmap": _fig_json(figures.head_heatmap(table)),
            "verdict": _fig_json(figures.verdict_figure(table)),
            "distribution": _fig_json(figures.r_distribution(table, criteria)),
            "uncertainty": _fig_json(figures.uncertainty_figure(table, criteria)),
            "robustness": _fig_json(figures.robustness_figure(table, criteria)),
            "random_init": _fig_json(figures.random_init_scatter(table)),
            "gain": _fig_json(figures.gain_scatter(table)),
            "alpha": None
            if alpha is None
            else _fig_json(
                figures.alpha_curves(
                    alpha, strongest, "H with the query scaled by alpha: the strongest heads"
                )  # fmt: skip
            ),
        },
        "alpha": alpha_payload(alpha),
        "attention": attention_payload(results.attention),
        "initial": list(strongest[0]),
    }
    summary = results.summary
    criteria_block = summary.get("criteria")
    hypothesis = summary.get("hypothesis")
    return (
        template_environment()
        .get_template("report.html.j2")
        .render(
            model=str(flat_config(results.config).get("model", "")),
            run_line=Markup(run_line(results.config, results)),
            hypothesis=hypothesis if isinstance(hypothesis, str) else None,
            headline=Markup(headline(summary, table)),
            cards=cards(table, criteria),
            criteria=None if criteria_block is None else Markup(criteria_html(criteria_block)),
            controls=Markup(controls_html(table, summary, criteria)),
            beyond=summary.get("beyond_r"),
            top_heads=top_heads(table),
            glossary=HEAD_COLUMNS,
            phase2=phase2_links(results),
            summary_html=Markup(render_value(summary)),
            config_html=Markup(render_value(results.config)),
            css=asset("report.css"),
            app_js=asset("report.js"),
            plotly_js=Markup(get_plotlyjs()),
            circuitsvis_js=Markup(bundle_js()),
            data=Markup(json_for_script(data)),
        )
    )


def build_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` (or `out`) from the results folder alone and return its path."""
    results = load_results(results_dir)
    target = Path(out) if out is not None else results.layout.report
    write_text(target, report_html(results))
    return target
