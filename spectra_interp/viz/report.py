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

from spectra_interp.results import Results, load_results
from spectra_interp.results.load import AttentionSample
from spectra_interp.results.store import write_text
from spectra_interp.stats.criteria import Criteria
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


def head_panels(
    results: Results, bins: int = 40, n_pos_bins: int = 32
) -> tuple[dict[str, dict], dict[str, go.Figure]]:
    """Per head, the density and position summaries as patches; and figures to patch into."""
    sample = results.token_sample
    if sample is None or sample.empty:
        return {}, {}
    if "model" in sample:
        sample = sample[sample["model"] == "trained"]
    skip_first = flat_config(results.config).get("skip_first", 0)
    skip_first = int(skip_first) if isinstance(skip_first, int | float) else 0
    titles = {
        (int(r["layer"]), int(r["head"])): figures.head_title(r)
        for r in results.head_stats.to_dict("records")
    }
    panels: dict[str, dict] = {}
    templates: dict[str, go.Figure] = {}
    for (layer, head), g in sample.groupby(["layer", "head"], sort=True):
        key = f"{int(layer)},{int(head)}"
        title = titles.get((int(layer), int(head)), f"L{layer} H{head}")
        kept = g[g["pos"] >= skip_first]
        density = figures.density_summary(
            kept["qnorm"].to_numpy(), kept["entropy"].to_numpy(), bins
        )
        n_keys = g["n_keys"].to_numpy() if "n_keys" in g else None
        profile = figures.position_profile(
            g["pos"].to_numpy(), g["qnorm"].to_numpy(), g["entropy"].to_numpy(), n_keys, n_pos_bins
        )
        panels[key] = {
            "density": _patch(figures.density_traces(density), f"‖q‖ vs H · {title}"),
            "position": _patch(
                figures.position_traces(profile), f"‖q‖ and H by position · L{layer} H{head}"
            ),
        }
        if not templates:
            templates["density"] = figures.density_figure(density)
            templates["position"] = figures.position_figure(profile)
    return panels, templates


def attention_payload(att: AttentionSample | None) -> dict | None:
    """The excerpt's patterns quantised to uint16 (plenty for a picture) plus ‖q‖ and H."""
    if att is None:
        return None
    n_layers, n_heads, t, _ = att.pattern.shape
    quantised = np.round(np.clip(att.pattern, 0, 1) * 65535).astype("<u2")
    return {
        "tokens": att.token_strs,
        "layers": n_layers,
        "heads": n_heads,
        "T": t,
        "pattern": base64.b64encode(quantised.tobytes()).decode("ascii"),
        "qnorm": base64.b64encode(att.qnorm.astype("<f4").tobytes()).decode("ascii"),
        "entropy": base64.b64encode(att.entropy.astype("<f4").tobytes()).decode("ascii"),
    }


def initial_head(table: pd.DataFrame) -> tuple[int, int]:
    """The head shown first: the passing head with the most negative r, else the most negative."""
    if "pearson_r" not in table or table["pearson_r"].isna().all():
        return int(table["layer"].iloc[0]), int(table["head"].iloc[0])
    passing = table[figures.passes_mask(table)]
    pool = passing if not passing.empty else table
    row = pool.loc[pool["pearson_r"].idxmin()]
    return int(row["layer"]), int(row["head"])


def _records(table: pd.DataFrame) -> list[dict]:
    clean = table.replace({np.nan: None})
    return json.loads(clean.to_json(orient="records"))


# --- HTML pieces ---------------------------------------------------------------------------


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "—"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


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


def cards(table: pd.DataFrame, criteria: Criteria) -> list[tuple[str, str]]:
    """Headline numbers, computed from head_stats so they exist whatever the summary."""
    passing = figures.passes_mask(table)
    sign = figures.sign_of(table)
    out = [
        ("heads", f"{len(table):,}"),
        ("passing", f"{int(passing.sum()):,}"),
        ("passing, r < 0", f"{int((passing & (sign < 0)).sum()):,}"),
        ("passing, r > 0", f"{int((passing & (sign > 0)).sum()):,}"),
    ]
    if "pearson_r" in table:
        r = pd.to_numeric(table["pearson_r"], errors="coerce")
        out.append((f"|r| ≥ {criteria.r_threshold}", f"{int(criteria.strong(r).sum()):,}"))
        out.append(("median r", f"{r.median():+.3f}"))
        if r.notna().any():
            row = table.loc[r.idxmin()]
            out.append(
                ("most negative", f"L{int(row['layer'])} H{int(row['head'])}: {r.min():+.3f}")
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
            f"<tr><th>{name}</th><td>{r.median():.3f}</td><td>{r.max():.3f}</td>"
            f"<td>{int(criteria.strong(r).sum())}</td></tr>"
        )
    out = ""
    if rows:
        out += (
            '<table class="grid controls"><tr><th></th><th>median |r|</th><th>max |r|</th>'
            f"<th>heads with |r| ≥ {criteria.r_threshold}</th></tr>{''.join(rows)}</table>"
        )
    if isinstance(summary.get("controls"), dict | list):
        out += render_value(summary["controls"])
    return out or "<p><em>No control columns in this folder.</em></p>"


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
    parts = [
        f"<b>{html.escape(label)}</b> {html.escape(_fmt(config[k]))}"
        for k, label in keys
        if k in config and not isinstance(config[k], dict | list)
    ]
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
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("spectra_interp.viz", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _asset(name: str) -> Markup:
    return Markup(_environment().loader.get_source(_environment(), name)[0])


def report_html(results: Results) -> str:
    """The whole page as one string."""
    table = results.head_stats
    criteria = results.criteria
    panels, templates = head_panels(results)
    data = {
        "layers": [int(v) for v in np.sort(table["layer"].unique())],
        "heads": [int(v) for v in np.sort(table["head"].unique())],
        "table": _records(table),
        "panels": panels,
        "templates": {k: _fig_json(v) for k, v in templates.items()},
        "figures": {
            "heatmap": _fig_json(figures.head_heatmap(table)),
            "verdict": _fig_json(figures.verdict_figure(table)),
            "distribution": _fig_json(figures.r_distribution(table, criteria)),
        },
        "attention": attention_payload(results.attention),
        "initial": list(initial_head(table)),
    }
    summary = results.summary
    criteria_block = summary.get("criteria")
    hypothesis = summary.get("hypothesis")
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            model=str(flat_config(results.config).get("model", "")),
            run_line=Markup(run_line(results.config, results)),
            hypothesis=hypothesis if isinstance(hypothesis, str) else None,
            headline=Markup(headline(summary, table)),
            cards=cards(table, criteria),
            criteria=None if criteria_block is None else Markup(criteria_html(criteria_block)),
            controls=Markup(controls_html(table, summary, criteria)),
            top_heads=top_heads(table),
            summary_html=Markup(render_value(summary)),
            config_html=Markup(render_value(results.config)),
            css=_asset("report.css"),
            app_js=_asset("report.js"),
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
