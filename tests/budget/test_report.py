"""The Phase 2 report: built from the results folder alone, self-contained, and working in
headless Chromium (a missing browser fails the test)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from browser import ARTIFACTS, open_page
from markupsafe import escape

from spectra_interp.budget import arms
from spectra_interp.budget.curves import CURVE_COLUMNS
from spectra_interp.errors import SpectraError
from spectra_interp.viz import budget_report
from spectra_interp.viz import page as page_module


def _page_data(page: str) -> dict:
    match = re.search(
        r'<script type="application/json" id="spectra-data">(.*?)</script>', page, re.S
    )
    assert match, "the page carries its data block"
    return json.loads(match.group(1))


def test_the_report_is_one_file_built_from_the_folder(finished, tmp_path):
    page = budget_report.build_budget_report(finished, tmp_path / "page.html").read_text("utf-8")
    markup = re.sub(r"<script([^>]*)>.*?</script>", r"<script\1></script>", page, flags=re.S)
    assert markup.count("<script") == 3
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    summary = json.loads((finished / "summary.json").read_text())
    assert str(escape(summary["verdict"])) in page
    data = _page_data(page)
    assert set(data["figures"]) == {c for c, _ in budget_report.QUALITY_FIGURES}
    kl = data["figures"]["kl_mean"]["data"]
    assert [t["name"] for t in kl] == list(arms.ARMS)
    curves = pd.read_csv(finished / "budget_curves.csv")
    qnorm = curves[curves["arm"] == "qnorm"].sort_values("keys_frac")
    trace = next(t for t in kl if t["name"] == "qnorm")
    assert trace["y"] == pytest.approx(qnorm["kl_mean"].tolist())
    grid = data["heads"]["qnorm"]["0.3"]
    per_head = pd.read_csv(finished / "per_head.csv")
    row = per_head.query("arm == 'qnorm' and budget == 0.3 and layer == 1 and head == 2")
    assert grid[1][2] == pytest.approx(row["keys_frac"].item(), abs=1e-5)
    allocation = pd.read_csv(finished / "allocation.csv")
    cell = allocation.query(
        "arm == 'head_position' and budget == 0.3 and layer == 1 and head == 2"
    ).sort_values("position_bin")
    heat = data["allocation"]["head_position"]["0.3"]
    assert heat["rows"][1 * 4 + 2] == "L1.H2"
    assert heat["z"][1 * 4 + 2] == pytest.approx(cell["fraction"].tolist(), abs=1e-4)
    assert data["allocation_arms"] == ["head_position", "qnorm", "qnorm_shuffled", "entropy"]
    ratio = data["ratio"]["data"][0]
    assert ratio["y"] == pytest.approx([b["ratio"]["point"] for b in summary["budgets"]])
    # the shared page: the shipped bundle draws every trace, the toolbar sends nothing
    assert data["plotly_config"] == page_module.PLOTLY_CONFIG
    assert page_module.plotly_js()[:2000] in page
    figs = [*data["figures"].values(), data["ratio"]]
    used = {t.get("type", "scatter") for f in figs for t in f["data"]} | {"heatmap"}
    assert used <= set(page_module.bundle_trace_types())


def test_every_column_header_has_its_meaning(finished, tmp_path):
    page = budget_report.build_budget_report(finished, tmp_path / "page.html").read_text("utf-8")
    for table in ("comparisons", "curve-table", "source-table"):
        html = re.search(rf'<table class="grid" id="{table}">.*?</table>', page, re.S).group(0)
        heads = re.findall(r"<th([^>]*)>(.*?)</th>", html, re.S)
        assert heads and all("title=" in attrs for attrs, _ in heads), table
    assert f'title="{escape(CURVE_COLUMNS["kv_union_frac"])}"' in page


def test_a_folder_without_curves_says_so(tmp_path):
    with pytest.raises(SpectraError, match="no budget_curves.csv"):
        budget_report.build_budget_report(tmp_path)


def test_the_report_in_headless_chromium(finished):
    url = (finished / "report.html").resolve().as_uri()
    with open_page() as seen:
        page = seen.page
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        for name, _ in budget_report.QUALITY_FIGURES:
            assert page.locator(f"#fig-{name} .main-svg").count() > 0, name
        legend = page.eval_on_selector_all(
            "#fig-kl_mean .legendtext", "els => els.map((e) => e.textContent)"
        )
        assert set(arms.ARMS) <= set(legend)
        title = "#head-heatmap .gtitle"
        assert "qnorm at budget 0.5" in page.locator(title).text_content()
        page.select_option("#arm-select", "sink_local")
        page.select_option("#budget-select", "0.3")
        page.wait_for_function(
            "t => document.querySelector('#head-heatmap .gtitle').textContent.includes(t)",
            arg="sink_local at budget 0.3",
        )
        page.select_option("#allocation-select", "entropy")
        page.wait_for_function(
            "t => document.querySelector('#allocation-heatmap .gtitle').textContent.includes(t)",
            arg="entropy at budget 0.3",
        )
        assert page.locator("#fig-ratio .main-svg").count() > 0
        page.screenshot(path=str(ARTIFACTS / "budget_report.png"), full_page=True)
    assert seen.errors == [], f"console errors: {seen.errors}"
    assert set(seen.requests) == {url}, f"requests beyond the file: {set(seen.requests) - {url}}"
