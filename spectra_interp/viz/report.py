"""The results folder -> one self-contained `report.html` (plotly.js and circuitsvis inline).

The page holds the verdict, the whole-model figures and a head explorer: a click on the
heatmap swaps that head's precomputed density, position curves and attention view into place.
Everything comes from the results folder; no model is loaded and the page fetches nothing.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.offline import get_plotlyjs

from spectra_interp.errors import SpectraError
from spectra_interp.viz import figures
from spectra_interp.viz.attention import bundle_js, json_for_script

MET_KEYS = ("met", "passed", "pass", "passes", "ok", "satisfied", "success")
HEADLINE_KEYS = ("verdict", "conclusion", "headline", "message", "summary", "text")
SUPPORT_KEYS = ("all_criteria_met", "h1_supported", "supported", "success", "passed", "met")
TEXT_KEYS = ("description", "name", "criterion")


@dataclass(frozen=True)
class AttentionSample:
    """The short excerpt of window 0 for which every head's full pattern was kept."""

    token_strs: list[str]
    pattern: Float[np.ndarray, "layer head query key"]
    qnorm: Float[np.ndarray, "layer head pos"]
    entropy: Float[np.ndarray, "layer head pos"]


@dataclass
class Results:
    """A results folder read into plain objects (see the contract's "results folder")."""

    path: Path
    head_stats: pd.DataFrame
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    token_sample: pd.DataFrame | None = None
    attention: AttentionSample | None = None

    def head(self, layer: int, head: int) -> pd.Series:
        """The head_stats row of one head."""
        t = self.head_stats
        rows = t[(t["layer"] == layer) & (t["head"] == head)]
        if rows.empty:
            raise SpectraError(f"there is no head L{layer} H{head} in {self.path}/head_stats.csv.")
        return rows.iloc[0]

    def sample(self, layer: int, head: int, model: str = "trained") -> pd.DataFrame:
        """The token-sample rows of one head of one model ("trained" or "random_init")."""
        s = self.token_sample
        if s is None:
            raise SpectraError(f"{self.path} has no token_sample.parquet.")
        keep = (s["layer"] == layer) & (s["head"] == head)
        if "model" in s:
            keep &= s["model"] == model
        return s[keep]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpectraError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}).") from err
    return value if isinstance(value, dict) else {"value": value}


def load_results(results_dir: str | Path) -> Results:
    """Read a results folder; only head_stats.csv is required, the rest is shown if present."""
    path = Path(results_dir)
    if not path.is_dir():
        raise SpectraError(f"results folder {path} does not exist.")
    stats_path = path / "head_stats.csv"
    if not stats_path.is_file():
        raise SpectraError(f"{path} has no head_stats.csv: run the sweep first.")
    table = pd.read_csv(stats_path)
    missing = {"layer", "head"} - set(table.columns)
    if missing:
        raise SpectraError(f"{stats_path} lacks the column(s) {', '.join(sorted(missing))}.")
    table = table.sort_values(["layer", "head"]).reset_index(drop=True)
    sample_path = path / "token_sample.parquet"
    sample = pd.read_parquet(sample_path) if sample_path.is_file() else None
    attention = None
    att_path = path / "attention_sample.npz"
    if att_path.is_file():
        with np.load(att_path, allow_pickle=False) as z:
            attention = AttentionSample(
                token_strs=[str(s) for s in z["token_strs"]],
                pattern=z["pattern"].astype(np.float32),
                qnorm=z["qnorm"].astype(np.float32),
                entropy=z["entropy"].astype(np.float32),
            )
    return Results(
        path=path,
        head_stats=table,
        config=_read_json(path / "config.json"),
        summary=_read_json(path / "summary.json"),
        token_sample=sample,
        attention=attention,
    )


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


def numbers_html(table: pd.DataFrame) -> str:
    """Headline numbers as cards, computed from head_stats so they exist whatever the summary."""
    passing = figures.passes_mask(table)
    sign = figures.sign_of(table)
    cards = [
        ("heads", f"{len(table):,}"),
        ("passing", f"{int(passing.sum()):,}"),
        ("passing, r < 0", f"{int((passing & (sign < 0)).sum()):,}"),
        ("passing, r > 0", f"{int((passing & (sign > 0)).sum()):,}"),
    ]
    if "pearson_r" in table:
        r = pd.to_numeric(table["pearson_r"], errors="coerce")
        cards.append(("|r| ≥ 0.5", f"{int((r.abs() >= 0.5).sum()):,}"))
        cards.append(("median r", f"{r.median():+.3f}"))
        if r.notna().any():
            row = table.loc[r.idxmin()]
            cards.append(
                ("most negative", f"L{int(row['layer'])} H{int(row['head'])}: {r.min():+.3f}")
            )
    return "".join(
        f'<div class="card"><div class="num">{html.escape(v)}</div>'
        f'<div class="lbl">{html.escape(k)}</div></div>'
        for k, v in cards
    )


def controls_html(table: pd.DataFrame, summary: dict) -> str:
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
            f"<td>{int((r >= 0.5).sum())}</td></tr>"
        )
    out = ""
    if rows:
        out += (
            '<table class="grid controls"><tr><th></th><th>median |r|</th><th>max |r|</th>'
            f"<th>heads with |r| ≥ 0.5</th></tr>{''.join(rows)}</table>"
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


def top_heads_html(table: pd.DataFrame, n: int = 8) -> str:
    """The most negative and most positive heads, as clickable rows."""
    if "pearson_r" not in table:
        return ""
    passing = figures.passes_mask(table)

    def rows(frame: pd.DataFrame) -> str:
        out = []
        for idx, row in frame.iterrows():
            ci = ""
            if {"ci_low", "ci_high"} <= set(row.index):
                ci = f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
            q = _fmt(float(row["q_fdr"])) if "q_fdr" in row.index else "—"
            out.append(
                f'<tr class="pick" data-layer="{int(row["layer"])}" data-head="{int(row["head"])}">'
                f"<td>L{int(row['layer'])} H{int(row['head'])}</td><td>{row['pearson_r']:+.3f}</td>"
                f"<td>{ci}</td><td>{q}</td><td>{'✓' if passing[idx] else ''}</td></tr>"
            )
        return "".join(out)

    header = "<tr><th>head</th><th>r</th><th>95% CI</th><th>q</th><th>passes</th></tr>"
    ordered = table.sort_values("pearson_r")
    return (
        f'<div class="half"><h3>Most negative r</h3><table class="grid">{header}'
        f"{rows(ordered.head(n))}</table></div>"
        f'<div class="half"><h3>Most positive r</h3><table class="grid">{header}'
        f"{rows(ordered.tail(n).iloc[::-1])}</table></div>"
    )


def _fig_json(fig: go.Figure) -> dict:
    return json.loads(fig.to_json())


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#222;
background:#f4f5f7}
main{max-width:1400px;margin:0 auto;padding:12px 24px 40px}
h1{font-size:1.5em;margin:8px 0 2px}h2{font-size:1.2em;margin:4px 0 8px}h3{font-size:1em}
section{background:#fff;border-radius:8px;padding:14px 18px;margin:14px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.meta{color:#555;font-size:.9em}.headline{font-size:1.15em;margin:6px 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:10px}
.card{background:#f0f3f7;border-radius:6px;padding:8px 14px;min-width:110px}
.card .num{font-size:1.4em;font-weight:600}.card .lbl{color:#666;font-size:.85em}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-size:.85em;font-weight:600}
.badge.met{background:#d5f5e3;color:#1e8449}.badge.unmet{background:#fadbd8;color:#a93226}
.bool.yes{color:#1e8449;font-weight:600}.bool.no{color:#a93226;font-weight:600}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 8px;text-align:left;
vertical-align:top}table.grid td,table.grid th,table.criteria td,table.criteria th{
border-bottom:1px solid #e3e3e3}table.kv th{color:#555;font-weight:500}
.row{display:flex;flex-wrap:wrap;gap:14px}.half{flex:1 1 560px;min-width:0}
.plot{width:100%}tr.pick{cursor:pointer}tr.pick:hover{background:#eef3fb}
.hint{color:#666;font-size:.9em}#head-label{color:#2e6da4}
.controls-bar{display:flex;gap:12px;align-items:center;margin:6px 0 10px}
select{font-size:1em;padding:2px 4px}#head-stats td,#head-stats th{padding:2px 10px}
.cv{min-height:60px;overflow-x:auto}.about{font-weight:400;color:#666;font-size:.85em;
max-width:320px}.hypothesis{color:#444;margin:0 0 4px}
"""

APP_JS = r"""
(function () {
  const D = JSON.parse(document.getElementById('spectra-data').textContent);
  const CFG = {responsive: true, displaylogo: false};
  const clone = (x) => structuredClone(x);
  const plot = (id, fig) => Plotly.newPlot(id, clone(fig.data), clone(fig.layout), CFG);
  plot('heatmap', D.figures.heatmap);
  plot('verdict-fig', D.figures.verdict);
  plot('distribution-fig', D.figures.distribution);
  const rows = {};
  D.table.forEach((r) => { rows[r.layer + ',' + r.head] = r; });
  const bytes = (s) => { const b = atob(s); const a = new Uint8Array(b.length);
    for (let i = 0; i < b.length; i++) a[i] = b.charCodeAt(i); return a; };
  const A = D.attention;
  let pat = null, qn = null, en = null;
  if (A) { pat = new Uint16Array(bytes(A.pattern).buffer);
    qn = new Float32Array(bytes(A.qnorm).buffer); en = new Float32Array(bytes(A.entropy).buffer); }
  let cvCount = 0;
  function renderCV(hostId, component, props) {
    const host = document.getElementById(hostId);
    host.innerHTML = '';
    const div = document.createElement('div');
    div.id = hostId + '-' + (++cvCount);
    host.appendChild(div);
    CircuitsVis.render(div.id, CircuitsVis[component], props);
  }
  function patched(t, p) {
    const fig = clone(t);
    const data = fig.data.map((tr, i) => Object.assign(tr, clone(p.traces[i] || {})));
    fig.layout.title = Object.assign(fig.layout.title || {}, {text: p.title});
    return [data, fig.layout];
  }
  function fmt(v) {
    if (v === null || v === undefined) return '—';
    if (typeof v !== 'number') return String(v);
    return Number.isInteger(v) ? v.toLocaleString('en') : v.toPrecision(4);
  }
  function showStats(row) {
    const el = document.getElementById('head-stats');
    if (!row) { el.innerHTML = '<tr><td>No row in head_stats.csv.</td></tr>'; return; }
    el.innerHTML = Object.keys(row).map((k) =>
      '<tr><th>' + k + '</th><td>' + fmt(row[k]) + '</td></tr>').join('');
  }
  function showAttention(l, h) {
    const note = document.getElementById('attention-note');
    if (!A || l >= A.layers || h >= A.heads) {
      note.textContent = 'No attention sample for this head in the results folder.';
      document.getElementById('pattern-view').innerHTML = '';
      document.getElementById('token-view').innerHTML = '';
      return;
    }
    const T = A.T, base = (l * A.heads + h) * T * T, att = [];
    for (let i = 0; i < T; i++) { const row = new Array(T);
      for (let j = 0; j < T; j++) row[j] = pat[base + i * T + j] / 65535; att.push(row); }
    const vb = (l * A.heads + h) * T, values = [];
    for (let i = 0; i < T; i++) values.push([en[vb + i], qn[vb + i]]);
    note.textContent = 'The first ' + T + ' tokens of window 0, layer ' + l + ', head ' + h + '.';
    renderCV('pattern-view', 'AttentionPattern', {tokens: A.tokens, attention: att,
      maxValue: 1, minValue: 0, maskUpperTri: true, showAxisLabels: true});
    renderCV('token-view', 'ColoredTokensMulti', {tokens: A.tokens, values: values,
      labels: ['entropy H (nats)', '‖q‖']});
  }
  const layerSel = document.getElementById('layer-select');
  const headSel = document.getElementById('head-select');
  D.layers.forEach((l) => layerSel.add(new Option('layer ' + l, l)));
  D.heads.forEach((h) => headSel.add(new Option('head ' + h, h)));
  function selectHead(l, h) {
    l = Number(l); h = Number(h);
    const key = l + ',' + h, label = document.getElementById('head-label');
    label.textContent = 'L' + l + ' H' + h;
    label.dataset.layer = l; label.dataset.head = h;
    layerSel.value = l; headSel.value = h;
    showStats(rows[key]);
    const P = D.panels[key];
    const none = document.getElementById('panel-note');
    if (P && D.templates.density) {
      none.textContent = '';
      Plotly.react('density-fig', ...patched(D.templates.density, P.density), CFG);
      Plotly.react('position-fig', ...patched(D.templates.position, P.position), CFG);
    } else {
      none.textContent = 'No token sample for this head in the results folder.';
      Plotly.purge('density-fig'); Plotly.purge('position-fig');
    }
    showAttention(l, h);
    Plotly.relayout('heatmap', {shapes: [{type: 'rect', xref: 'x', yref: 'y',
      x0: l - 0.5, x1: l + 0.5, y0: h - 0.5, y1: h + 0.5,
      line: {color: '#f1c40f', width: 3}}]});
    if (location.hash !== '#L' + l + 'H' + h) history.replaceState(null, '', '#L' + l + 'H' + h);
  }
  document.getElementById('heatmap').on('plotly_click', (ev) => {
    const p = ev.points && ev.points[0];
    if (p) { selectHead(p.x, p.y);
      document.getElementById('explorer').scrollIntoView({behavior: 'smooth'}); }
  });
  layerSel.addEventListener('change', () => selectHead(layerSel.value, headSel.value));
  headSel.addEventListener('change', () => selectHead(layerSel.value, headSel.value));
  document.querySelectorAll('tr.pick').forEach((tr) => tr.addEventListener('click', () => {
    selectHead(tr.dataset.layer, tr.dataset.head);
    document.getElementById('explorer').scrollIntoView({behavior: 'smooth'}); }));
  const m = /^#L(\d+)H(\d+)$/.exec(location.hash);
  if (m && rows[m[1] + ',' + m[2]]) selectHead(m[1], m[2]);
  else selectHead(D.initial[0], D.initial[1]);
  document.body.dataset.ready = '1';
})();
"""


def report_html(results: Results) -> str:
    """The whole page as one string."""
    table = results.head_stats
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
            "distribution": _fig_json(figures.r_distribution(table)),
        },
        "attention": attention_payload(results.attention),
        "initial": list(initial_head(table)),
    }
    summary = results.summary
    criteria = summary.get("criteria")
    criteria_block = (
        f"<h3>Success criteria</h3>{criteria_html(criteria)}" if criteria is not None else ""
    )
    model = html.escape(str(flat_config(results.config).get("model", "")))
    hypothesis = ""
    if isinstance(summary.get("hypothesis"), str):
        hypothesis = f'<p class="hypothesis">{html.escape(summary["hypothesis"])}</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Spectra report{" · " + model if model else ""}</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>Spectra: does ‖q‖ predict attention entropy?</h1>
<p class="meta">{run_line(results.config, results)}</p></header>
<section id="verdict"><h2>Verdict</h2>{hypothesis}
<p class="headline">{headline(summary, table)}</p>
<div class="cards">{numbers_html(table)}</div>
{criteria_block}
<h3>Controls</h3>{controls_html(table, summary)}
</section>
<section id="overview"><h2>All heads</h2>
<p class="hint">Click a cell to explore that head below.</p>
<div id="heatmap" class="plot"></div>
<div class="row"><div class="half"><div id="verdict-fig" class="plot"></div></div>
<div class="half"><div id="distribution-fig" class="plot"></div></div></div>
<div class="row">{top_heads_html(table)}</div>
</section>
<section id="explorer"><h2>Head <span id="head-label"></span></h2>
<div class="controls-bar"><select id="layer-select" aria-label="layer"></select>
<select id="head-select" aria-label="head"></select>
<span class="hint">or click the heatmap / a table row</span></div>
<p id="panel-note" class="hint"></p>
<div class="row"><div class="half"><div id="density-fig" class="plot"></div></div>
<div class="half"><div id="position-fig" class="plot"></div></div></div>
<div class="row"><div class="half"><h3>Attention pattern</h3>
<p id="attention-note" class="hint"></p><div id="pattern-view" class="cv"></div></div>
<div class="half"><h3>Per-token H and ‖q‖ (toggle, hover)</h3><div id="token-view" class="cv"></div>
<h3>Statistics</h3><table id="head-stats"></table></div></div>
</section>
<section id="raw"><details><summary>summary.json</summary>{render_value(summary)}</details>
<details><summary>config.json</summary>{render_value(results.config)}</details></section>
</main>
<script>{get_plotlyjs()}</script>
<script>{bundle_js()}</script>
<script type="application/json" id="spectra-data">{json_for_script(data)}</script>
<script>{APP_JS}</script>
</body></html>
"""


def build_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` (or `out`) from the results folder alone and return its path."""
    results = load_results(results_dir)
    target = Path(out) if out is not None else results.path / "report.html"
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(report_html(results), encoding="utf-8")
    tmp.replace(target)
    return target
