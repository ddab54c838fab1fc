"""compare.html from folders made by the real sweep and Phase 2 code on tiny random models: two
architectures (a 2-layer Llama, a 3-layer Qwen3 with QK-norm), two contexts of the Llama, and a
Phase 2 run of the Llama."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from arch_matrix import MATRIX
from browser import (
    ARTIFACTS,
    block_outside,
    click_every_toolbar_button,
    left_the_machine,
    open_page,
)
from budget.helpers import run_config, small_tokenizer

from spectra_interp import settings
from spectra_interp.cli import main
from spectra_interp.config import SweepConfig
from spectra_interp.errors import SpectraError
from spectra_interp.stats.clusters import Clusters
from spectra_interp.stats.layers import layer_profile
from spectra_interp.viz import compare
from spectra_interp.viz.figures import TEMPLATE
from spectra_interp.viz.page import PLOTLY_CONFIG, bundle_trace_types, fig_json, plotly_js
from spectra_interp.viz.runs import BudgetRun, SweepRun, load_run, load_sweep

SWEEP = {
    "max_windows": 16,
    "sample_per_window": 8,
    "n_boot": 40,
    "device": "cpu",
    "dtype": "float32",
    "controls": "randomization,position",
    "progress": False,
    "report": False,
}


def _tiny(name: str, folder: Path, tokenizer, **overrides) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    cls, kwargs = MATRIX[name]
    config = getattr(transformers, cls)(**{**kwargs, "vocab_size": len(tokenizer), **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # sharper, more varied attention than the init (as arch_matrix does)
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(4.0)
            elif "q_norm" in name:  # a QK-norm gain of ones would make every ‖q‖ the same
                p.uniform_(0.2, 3.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Finished folders: llama at ctx 32 and 48, qwen3 (3 layers) at ctx 32, Phase 2 of llama
    at ctx 32 (eight documents, so the clusters are documents)."""
    from spectra_interp.budget import run_budget
    from spectra_interp.corpus import load_documents
    from spectra_interp.sweep import run_sweep

    root = tmp_path_factory.mktemp("compare")
    corpus = root / "corpus"
    corpus.mkdir()
    for doc in load_documents("bundled")[:8]:
        (corpus / f"{doc.doc_id}.txt").write_text(doc.text[20_000:23_000])
    tokenizer = small_tokenizer([p.read_text() for p in sorted(corpus.iterdir())])
    llama = _tiny("llama", root / "llama", tokenizer)
    qwen3 = _tiny("qwen3", root / "qwen3", tokenizer, num_hidden_layers=3)
    out = {}
    for name, model, ctx in (
        ("llama-32", llama, 32),
        ("llama-48", llama, 48),
        ("qwen3-32", qwen3, 32),
    ):
        values = {**SWEEP, "model": str(model), "corpus": str(corpus), "ctx": ctx}
        out[name] = root / name
        run_sweep(
            settings.build(SweepConfig, {**values, "out": str(out[name])}), log=lambda _: None
        )
    out["phase2"] = root / "phase2"
    config = run_config(llama, corpus, out["phase2"], ctx=32, max_windows=4, calibration_windows=4)
    run_budget(config, log=lambda _: None)
    return out


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_load_run_tells_sweeps_from_phase2(folders):
    run = load_run(folders["qwen3-32"])
    assert isinstance(run, SweepRun) and isinstance(load_run(folders["phase2"]), BudgetRun)
    a = run.architecture
    assert (a.n_layers, a.n_heads, a.n_kv_heads, a.d_head, a.qk_norm) == (3, 4, 2, 16, True)
    assert load_run(folders["llama-32"]).architecture.qk_norm is False
    assert run.stats.shape == (16, 3, 4, run.stats.shape[-1])
    assert Clusters.of(run.meta).unit == "document"


def test_the_table_is_each_folders_summary(folders):
    page = compare.load_page([folders[k] for k in ("llama-32", "llama-48", "qwen3-32", "phase2")])
    assert [r["run"] for r in page.rows] == ["llama-32", "llama-48", "qwen3-32"]
    for row in page.rows:
        s = _summary(folders[row["run"]])
        table = pd.read_csv(folders[row["run"]] / "head_stats.csv")
        assert row["passing"] == s["passing"]["total"]
        assert row["passing_share"] == s["passing"]["share_of_heads"]
        assert row["criteria_met"] == s["all_criteria_met"]
        assert row["temperature_share"] == s["beyond_r"]["temperature_share"]["median"]
        assert row["delta_r2_share"] == s["beyond_r"]["delta_r2"]["share"]
        assert row["median_r"] == pytest.approx(table["pearson_r"].median(), abs=1e-12)
        assert row["ctx"] == s["run"]["ctx"] and row["n_windows"] == s["run"]["n_windows"]
        config = json.loads((folders[row["run"]] / "config.json").read_text())
        assert row["layers"] == config["attention"]["n_layers"]
        assert row["q_source"].startswith(config["q_source"]["method"])
    # Phase 2 sits on the row of the same model and ctx, one verdict per budget
    phase2 = _summary(folders["phase2"])
    budgets = [f"{b['budget']:g}: " for b in phase2["budgets"]]
    assert len(budgets) == 2 and all(b in page.rows[0]["phase2"] for b in budgets)
    first = phase2["budgets"][0]
    assert f"{budgets[0]}{first['call']} (KL ratio " in page.rows[0]["phase2"]
    assert format(first["ratio"]["point"], ".3g") in page.rows[0]["phase2"]
    assert page.rows[1]["phase2"] == "—" and page.rows[2]["phase2"] == "—"


def test_a_phase2_folder_without_its_sweep_gets_a_row_of_its_own(folders):
    page = compare.load_page([folders["qwen3-32"], folders["phase2"]])
    assert [r["kind"] for r in page.rows] == ["sweep", "Phase 2"]
    assert page.rows[1]["model"] == str(folders["llama-32"].parent / "llama")


def test_normalised_depth_runs_from_0_to_1_whatever_the_depth(folders):
    page = compare.load_page([folders["llama-32"], folders["qwen3-32"]])
    depths = {c.label: c.profile["depth"].tolist() for c in page.compared}
    assert depths == {"llama-32": [0.0, 1.0], "qwen3-32": [0.0, 0.5, 1.0]}
    assert compare.normalised_depth(0, 1) == 0.0
    trace = page.figures["mean_r"].data[-1]
    assert list(trace.x) == [0.0, 0.5, 1.0]


def test_layer_points_are_the_head_tables_and_inside_their_bands(folders):
    run = load_sweep(folders["llama-48"])
    profile = compare.profile_of(run)
    table = run.head_stats
    by_layer = table.groupby("layer")
    assert np.allclose(profile["mean_r"], by_layer["pearson_r"].mean(), atol=1e-9)
    assert np.allclose(profile["share_passing"], by_layer["passes"].mean())
    assert np.allclose(profile["mean_delta_r2"], by_layer["delta_r2"].mean(), atol=1e-12)
    assert (profile["mean_r_ci_low"] <= profile["mean_r_ci_high"]).all()
    assert (profile["mean_r_ci_high"] > profile["mean_r_ci_low"]).any()


def test_degenerate_heads_are_left_out(folders, tmp_path):
    folder = tmp_path / "degenerate"
    shutil.copytree(folders["llama-32"], folder)
    table = pd.read_csv(folder / "head_stats.csv")
    flagged = (table["layer"] == 0) & (table["head"] == 1)
    table["degenerate"] = flagged.map({True: "constant H", False: ""})  # a reason, or empty
    table.to_csv(folder / "head_stats.csv", index=False)
    run = load_sweep(folder)
    assert run.included.sum() == 7 and not run.included[0, 1]
    assert len(run.heads) == 7
    profile = compare.profile_of(run)
    assert profile["heads"].tolist() == [3, 4]
    kept = table[~flagged]
    assert profile["mean_r"].iloc[0] == pytest.approx(kept[kept["layer"] == 0]["pearson_r"].mean())
    row = compare.sweep_row(compare.Compared("d", "#000", run, profile))
    assert row["degenerate"] == 1 and row["median_r"] == pytest.approx(kept["pearson_r"].median())


def test_runs_of_one_architecture_are_paired_head_by_head(folders):
    page = compare.load_page([folders[k] for k in ("llama-32", "qwen3-32", "llama-48")])
    assert [(p["a"], p["b"]) for p in page.pairs] == [("llama-32", "llama-48")]
    a = pd.read_csv(folders["llama-32"] / "head_stats.csv")
    b = pd.read_csv(folders["llama-48"] / "head_stats.csv")
    want = np.corrcoef(a["pearson_r"], b["pearson_r"])[0, 1]
    assert page.pairs[0]["correlation"] == pytest.approx(want)


def test_differences_in_settings_are_highlighted(folders, tmp_path):
    page = compare.load_page([folders["llama-32"], folders["llama-48"]])
    assert page.differ == []
    other = tmp_path / "other-corpus"
    shutil.copytree(folders["llama-48"], other)
    summary = _summary(other)
    summary["run"]["corpus"] = "tinyshakespeare"
    (other / "summary.json").write_text(json.dumps(summary))
    html = compare.compare_html([folders["llama-32"], other])
    assert "These runs differ in corpus" in html
    assert html.count('class="differs"') == 2


def test_refusals_name_the_folder(folders, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(folders["llama-32"], half)
    (half / "summary.json").unlink()
    with pytest.raises(SpectraError, match=f"^{re.escape(str(half))} is not a finished sweep"):
        load_run(half)
    old = tmp_path / "old"
    shutil.copytree(folders["llama-32"], old)
    config = json.loads((old / "config.json").read_text())
    config["schema_version"] = 1
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SpectraError, match=f"^{re.escape(str(old))} holds a sweep folder of schema 1"
    ):
        load_run(old)
    old_phase2 = tmp_path / "old-phase2"
    shutil.copytree(folders["phase2"], old_phase2)
    config = json.loads((old_phase2 / "config.json").read_text())
    config["schema_version"] = 1
    (old_phase2 / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SpectraError, match=f"^{re.escape(str(old_phase2))} holds a Phase 2 folder of schema 1"
    ):
        load_run(old_phase2)
    with pytest.raises(SpectraError, match="is a Phase 2 folder, not a sweep folder"):
        load_sweep(folders["phase2"])
    with pytest.raises(SpectraError, match="is not a Spectra results folder"):
        load_run(tmp_path)
    with pytest.raises(SpectraError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_cli_writes_the_page_and_refuses_in_one_line(folders, tmp_path, capsys):
    out = tmp_path / "compare.html"
    code = main(["compare", str(folders["llama-32"]), str(folders["qwen3-32"]), "--out", str(out)])
    assert code == 0 and out.is_file()
    assert f"Comparison: {out}" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_compare_page_in_headless_chromium(folders, tmp_path):
    names = ("llama-32", "llama-48", "qwen3-32", "phase2")
    path = compare.build_compare([folders[k] for k in names], tmp_path / "compare.html")
    page_text = path.read_text(encoding="utf-8")
    markup = re.sub(r"<script([^>]*)>.*?</script>", r"<script\1></script>", page_text, flags=re.S)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    runs_table = re.search(r'<table class="grid runs".*?</table>', markup, re.S).group(0)
    headers = re.findall(r"<th([^>]*)>", runs_table)
    assert headers and all("title=" in h for h in headers)
    a = pd.read_csv(folders["llama-32"] / "head_stats.csv").set_index(["layer", "head"])
    b = pd.read_csv(folders["llama-48"] / "head_stats.csv").set_index(["layer", "head"])
    url = path.resolve().as_uri()
    with open_page() as seen:
        page = seen.page
        block_outside(page)
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        ids = ["mean_r", "share_passing", "mean_delta_r2", "r_ecdf", "pair_0"]
        for name in ids:
            n = page.evaluate(
                f"document.querySelectorAll('#fig-{name} .scatterlayer .trace').length"
            )
            assert n > 0, f"figure {name} drew nothing"
        # hover the scatter's point of head L1 H2 and read both runs' r as in the CSVs
        x, y = page.evaluate(
            """([xv, yv]) => {
                const gd = document.getElementById('fig-pair_0');
                gd.scrollIntoView({block: 'center'});
                const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                const box = gd.getBoundingClientRect();
                return [box.left + xa._offset + xa.l2p(xv), box.top + ya._offset + ya.l2p(yv)];
            }""",
            [float(a.loc[(1, 2), "pearson_r"]), float(b.loc[(1, 2), "pearson_r"])],
        )
        page.mouse.move(x, y)
        page.wait_for_function(
            "() => document.querySelector('#fig-pair_0 .hoverlayer')?.textContent?.includes('L')"
        )
        hover = page.evaluate("document.querySelector('#fig-pair_0 .hoverlayer').textContent")
        assert "L1 H2" in hover, hover
        assert f"r = {a.loc[(1, 2), 'pearson_r']:.4f}" in hover
        assert f"r = {b.loc[(1, 2), 'pearson_r']:.4f}" in hover
        page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
        assert set(seen.requests) == {url}, f"requests beyond the file: {set(seen.requests)}"
        # every toolbar button of every figure, clicked with outside requests blocked
        titles = click_every_toolbar_button(page)
        assert len(titles) >= len(ids)
    assert seen.errors == [], f"console errors: {seen.errors}"
    outside_requests = left_the_machine(seen)
    assert outside_requests == [], f"requests that would leave the machine: {outside_requests}"


def test_layer_profile_without_clusters_to_resample_has_no_band(folders):
    run = load_sweep(folders["llama-32"])
    one = Clusters(np.zeros(len(run.meta), dtype=np.int64), "document")
    profile = layer_profile(run.stats, one, run.included, run.criteria, n_boot=10)
    assert profile["mean_r_ci_low"].isna().all() and profile["mean_r"].notna().all()


def test_the_page_is_the_shared_base_with_the_cartesian_bundle(folders):
    import plotly.graph_objects as go

    names = ("llama-32", "llama-48", "qwen3-32", "phase2")
    html = compare.compare_html([folders[k] for k in names])
    assert plotly_js() in html and html.count("<script>") == 2
    block = re.search(r'<script type="application/json" id="spectra-data">(.*?)</script>', html)
    data = json.loads(block.group(1))
    assert data["plotly_config"] == PLOTLY_CONFIG
    figs = data["figures"].values()
    used = {t.get("type", "scatter") for f in figs for t in f["data"]}
    assert used and used <= set(bundle_trace_types()), used
    registered = fig_json(go.Figure(layout={"template": TEMPLATE}))["layout"]["template"]
    assert all(f["layout"]["template"] == registered for f in figs)
    level = f"{compare.CI_LEVEL:.0%}"
    assert f"bands are {level} percentile intervals" in html
    assert f"({level} bands)" in data["figures"]["mean_r"]["layout"]["title"]["text"]
