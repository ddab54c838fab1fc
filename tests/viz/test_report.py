"""report.html from a results folder: its contents, its size, and how it behaves in Chromium."""

import base64
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import (
    ARTIFACTS,
    block_outside,
    click_every_toolbar_button,
    left_the_machine,
    open_page,
    pixel,
)
from fake_results import make_fake_results

from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import BudgetLayout
from spectra_interp.viz import figures, report

MAX_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_fake_results(tmp_path_factory.mktemp("small"), 4, 3)


@pytest.fixture(scope="module")
def smollm2_sized(tmp_path_factory) -> Path:
    """A folder the size of the default run: 30 layers x 9 heads, 16 windows x 256 positions."""
    folder = make_fake_results(
        tmp_path_factory.mktemp("smollm2-sized"),
        30,
        9,
        n_windows=16,
        ctx=256,
        per_window=256,
        excerpt=64,
    )
    report.build_report(folder)
    return folder


def _page_data(page: str) -> dict:
    pattern = r'<script type="application/json" id="spectra-data">(.*?)</script>'
    match = re.search(pattern, page, re.S)
    assert match, "the page carries its data block"
    return json.loads(match.group(1))


def test_load_results_reads_every_part(small):
    res = report.load_results(small)
    assert len(res.head_stats) == 12
    assert res.config["config"]["model"] == "fake-model"
    assert isinstance(res.summary.criteria.significance.met, bool)
    assert set(res.token_sample["model"]) == {"trained", "random_init"}
    assert res.attention.pattern.shape == (2, 4, 3, 16, 16)
    assert res.attention.token_strs[0][1] == "The" and list(res.attention.starts) == [8, 8]
    assert list(res.alpha_response.columns) == ["layer", "head", "scale", "mean_entropy"]
    assert len(res.sample(2, 1)) == 8 * 32
    assert res.head(2, 1)["layer"] == 2
    with pytest.raises(SpectraError, match="no head L9 H0"):
        res.head(9, 0)


def test_load_results_says_what_is_missing(tmp_path):
    with pytest.raises(SpectraError, match="does not exist"):
        report.load_results(tmp_path / "nope")
    with pytest.raises(SpectraError, match="no head_stats.csv"):
        report.load_results(tmp_path)
    (tmp_path / "head_stats.csv").write_text("layer,head\n0,0\n")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(SpectraError, match="summary.json is not valid JSON"):
        report.load_results(tmp_path)


def test_head_panels_are_the_figure_functions_own_numbers(small):
    res = report.load_results(small)
    panels, templates = report.head_panels(res)
    assert set(panels) == {"trained", "random_init"} and set(templates) == {"density", "position"}
    assert len(panels["trained"]) == len(panels["random_init"]) == 12
    for model in panels:
        g = res.sample(1, 2, model)
        want = figures.density_summary(
            g["qnorm"].to_numpy(), g["entropy"].to_numpy(), report.DENSITY_BINS
        )
        spec = panels[model]["1,2"]["density"]["traces"][0]["customdata"]
        bins = report.DENSITY_BINS
        got = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.uint16).reshape(bins, bins)
        assert spec["shape"].replace(" ", "") == f"{bins},{bins}" and (got == want.counts).all()
    title = panels["trained"]["1,2"]["density"]["title"]
    n_tokens = int(res.head(1, 2)["n_tokens"])
    assert "L1 H2" in title and f"{len(res.sample(1, 2)):,} sampled of {n_tokens:,} tokens" in title
    random_title = panels["random_init"]["1,2"]["density"]["title"]
    assert f"random init · r = {res.head(1, 2)['random_init_r']:+.3f}" in random_title


def test_report_is_one_file_with_everything_inline(small):
    path = report.build_report(small)
    assert path == small / "report.html"
    page = path.read_text(encoding="utf-8")
    markup = re.sub(r"<script([^>]*)>.*?</script>", r"<script\1></script>", page, flags=re.S)
    assert markup.count("<script") == 4
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    assert "cdn.plot.ly" not in markup and "unpkg.com" not in page
    assert page.count("var CircuitsVis") == 1
    assert "Plotly" in page and "sourceMappingURL=iife" not in page
    data = _page_data(page)
    assert len(data["rows"]) == 12 and len(data["panels"]["trained"]) == 12
    assert data["attention"]["T"] == 16 and len(data["attention"]["slices"]) == 2
    assert set(data["metrics"]) == set(figures.HEATMAP_METRICS)
    assert data["glossary"]["q_fdr"].startswith("Benjamini-Hochberg")
    assert len(data["alpha"]["curves"]) == 12
    n_pass = int(figures.passes_mask(report.load_results(small).head_stats).sum())
    assert f"{n_pass} of 12 heads pass" in page
    met = report.load_results(small).summary.all_criteria_met
    assert ("all success criteria met" if met else "success criteria not all met") in page
    assert "H1: corr(‖q‖, attention entropy) &lt; 0 per head" in page
    assert "randomization control" in page and "mean_perm_r" in page
    assert "within 0.02 of 0" in page


def _untitled_headers(html: str) -> list[str]:
    """Column and row headers with text but no tooltip."""
    return [
        h for a, h in re.findall(r"<th(\s[^>]*)?>(.*?)</th>", html, re.S) if h and "title=" not in a
    ]


def test_every_number_on_the_page_says_what_it_is(small):
    page = report.build_report(small).read_text(encoding="utf-8")
    cards = re.findall(r'<div class="card"([^>]*)>', page)
    assert len(cards) >= 6 and all('title="' in c for c in cards)
    assert 'title="the pass rule holds' in page  # the glossary's own text, not a copy
    controls = re.search(r'<table class="grid controls">.*?</table>', page, re.S).group(0)
    tops = re.findall(r'<table class="grid tops">\s*<tr><th title.*?</table>', page, re.S)
    assert tops and _untitled_headers(controls + "".join(tops)) == []
    tables = [controls, *tops] + [
        re.search(rf'<table [^>]*id="{name}".*?</table>', page, re.S).group(0)
        for name in ("layer-table", "head-table", "files", "windows-table")
    ]
    for table in tables:
        assert _untitled_headers(table) == []
        for attrs, text in re.findall(r"<th(\s[^>]*)?>(.*?)</th>", table, re.S):
            title = html.unescape(re.search(r'title="([^"]*)"', attrs).group(1))
            assert title.startswith(html.unescape(text) + ":"), (text, title)


def test_report_renders_without_summary_and_missing_parts(tmp_path, small):
    folder = tmp_path / "partial"
    shutil.copytree(small, folder)
    (folder / "token_sample.parquet").unlink()
    (folder / "attention_sample.npz").unlink()
    (folder / "summary.json").unlink()
    page = report.build_report(folder).read_text(encoding="utf-8")
    n_pass = int(figures.passes_mask(report.load_results(folder).head_stats).sum())
    assert f"{n_pass} of 12 heads pass" in page and "Success criteria" not in page
    data = _page_data(page)
    assert data["panels"] == {} and data["attention"] is None


def test_a_summary_without_a_verdict_field_is_named(tmp_path, small):
    folder = tmp_path / "odd"
    shutil.copytree(small, folder)
    recorded = json.loads((folder / "summary.json").read_text())
    del recorded["criteria"]
    (folder / "summary.json").write_text(json.dumps(recorded))
    with pytest.raises(SpectraError, match="summary.json has no 'criteria'"):
        report.load_results(folder)


def test_verdict_says_its_caveat_with_numbers_from_the_folder(small):
    page = report.build_report(small).read_text(encoding="utf-8")
    res = report.load_results(small)
    n, n_pass = len(res.head_stats), int(figures.passes_mask(res.head_stats).sum())
    caveat = re.search(r'<div class="caveat" id="verdict-caveat">.*?</div>', page, re.S).group(0)
    median = res.summary.beyond_r.temperature_share.median
    assert f"median temperature share is {median:.2f}" in caveat
    assert f"{n_pass} of {n} heads pass = {n_pass / n:.1%}" in page
    needed = figures.heads_needed(res.criteria, n)
    assert f"the criterion needs {needed} ({res.criteria.min_share:.0%})" in page
    layers = re.search(r'<table class="grid" id="layer-table">.*?</table>', page, re.S).group(0)
    for row in res.summary.per_layer:
        assert f"<td>{row.passing}</td><td>{row.negative}</td>" in layers
        assert f"<td>{row.mean_r:+.3f}</td>" in layers


def test_degenerate_heads_are_left_out_of_the_figures(tmp_path, small):
    folder = tmp_path / "degenerate"
    shutil.copytree(small, folder)
    table = pd.read_csv(folder / "head_stats.csv")
    flagged = table.index.isin([0, 4])
    table["degenerate"] = np.where(flagged, "constant H", "")  # the column holds the reason
    table.to_csv(folder / "head_stats.csv", index=False)
    page = report.build_report(folder).read_text(encoding="utf-8")
    data = _page_data(page)
    z = np.array(data["metrics"]["pearson_r"]["z"], dtype=float)
    for _, row in table[flagged].iterrows():
        head = data["heads"].index(int(row["head"]))
        assert int(row["layer"]) not in data["layers"] or np.isnan(
            z[head, data["layers"].index(int(row["layer"]))]
        )
    kept = table[~flagged]
    n_pass = int(figures.passes_mask(kept).sum())
    assert f"{n_pass} of {len(kept)} heads pass" in page
    assert "2 heads marked degenerate" in page
    assert len(data["rows"]) == len(table), "the explorer still shows every head"


def test_config_line_reads_flat_and_sectioned_config_json(small):
    res = report.load_results(small)
    line = report.run_line(res.config, res)
    assert "<b>model</b> fake-model" in line and "<b>windows</b> 8" in line
    assert "<b>device</b> cpu" in line and "<b>commit</b> 0123456789" in line
    flat = {"model": "m", "ctx": 64, "max_windows": 2, "skip_first": 3}
    assert "<b>windows</b> 2" in report.run_line(flat, res)
    assert report.flat_config(flat)["skip_first"] == 3
    assert report.flat_config(res.config)["skip_first"] == 1


def test_render_value_nests_tables_and_flags_booleans():
    out = report.render_value({"a": {"b": True, "c": 0.123456}, "d": [{"x": 1}, {"x": 2}]})
    assert out.count("<table") == 3
    assert 'class="bool yes"' in out and "0.1235" in out
    assert report.render_value("<b>") == "&lt;b&gt;"


def test_initial_head_is_the_most_negative_passing_head(small):
    table = report.load_results(small).head_stats
    layer, head = report.initial_head(table)
    passing = table[figures.passes_mask(table)]
    best = passing.loc[passing["pearson_r"].idxmin()]
    assert (layer, head) == (best["layer"], best["head"])


def test_report_for_the_default_run_stays_under_25_mb(smollm2_sized):
    size = (smollm2_sized / "report.html").stat().st_size
    assert size < MAX_BYTES, f"report.html is {size / 1e6:.1f} MB"
    data = _page_data((smollm2_sized / "report.html").read_text(encoding="utf-8"))
    assert len(data["panels"]["trained"]) == len(data["panels"]["random_init"]) == 270


def _cell_position(page, layer: int, head: int) -> tuple[float, float]:
    """Viewport pixel of a heatmap cell, from plotly's own axis mapping."""
    return page.evaluate(
        """([l, h]) => {
            const gd = document.getElementById('heatmap');
            gd.scrollIntoView({block: 'center'});
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
            const box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.l2p(l), box.top + ya._offset + ya.l2p(h)];
        }""",
        [layer, head],
    )


def test_report_in_headless_chromium(smollm2_sized):
    path = smollm2_sized / "report.html"
    url = path.resolve().as_uri()
    table = report.load_results(smollm2_sized).head_stats
    tiny = table.loc[table["q_fdr"].idxmin()].to_dict()
    assert 0 < tiny["q_fdr"] < 1e-3, "the fixture has a head with a tiny q-value"
    with open_page() as seen:
        page = seen.page
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        label = page.locator("#head-label")
        first = (int(label.get_attribute("data-layer")), int(label.get_attribute("data-head")))
        assert label.inner_text() == f"L{first[0]} H{first[1]}"
        assert page.locator("#pattern-view canvas, #pattern-view svg").count() > 0
        target = (7, 4) if first != (7, 4) else (8, 5)
        x, y = _cell_position(page, *target)
        page.mouse.click(x, y)
        want = f"L{target[0]} H{target[1]}"
        page.wait_for_function(
            "t => document.getElementById('head-label').textContent === t", arg=want
        )
        page.wait_for_function(
            "t => (document.querySelector('#density-fig .gtitle') || {}).textContent?.includes(t)",
            arg=want,
        )
        note = page.locator("#attention-note").inner_text()
        assert f"layer {target[0]}, head {target[1]}" in note
        assert page.locator("#pattern-view canvas, #pattern-view svg").count() > 0
        assert page.locator("#token-view").inner_text().strip() != ""
        # another slice of attention redraws the views with its tokens
        page.select_option("#slice-select", "1")
        page.wait_for_function(
            "() => document.getElementById('attention-note').textContent.startsWith('window 1')"
        )
        # the random-init toggle swaps the head's panels for the control's
        page.check("#model-random_init")
        page.wait_for_function(
            "() => (document.querySelector('#density-fig .gtitle') || {}).textContent"
            "?.includes('random init')"
        )
        # a fragment changed after load selects that head
        page.evaluate("location.hash = '#L3H2'")
        page.wait_for_function(
            "() => document.getElementById('head-label').textContent === 'L3 H2'"
        )
        # an unknown head says so and keeps the one shown
        page.evaluate("location.hash = '#L99H0'")
        message = page.locator("#head-message")
        message.wait_for(state="visible")
        assert "There is no head L99 H0 in this run (layers 0–29, heads 0–8)" in (
            message.inner_text()
        )
        assert label.inner_text() == "L3 H2"
        assert page.evaluate("location.hash") == "#L99H0", "the address is not rewritten"
        # the metric switch redraws the heatmap with the chosen metric
        before = page.evaluate("document.getElementById('heatmap')._fullData[0].z[0][0]")
        page.select_option("#metric-select", "random_init_r")
        page.wait_for_function(
            "() => document.querySelector('#heatmap .gtitle')?.textContent"
            "?.startsWith('random-init r')"
        )
        after = page.evaluate("document.getElementById('heatmap')._fullData[0].z[0][0]")
        assert after != before
        want_z = tiny["random_init_r"]
        cell = f"[{int(tiny['head'])}][{int(tiny['layer'])}]"
        got_z = page.evaluate(f"document.getElementById('heatmap')._fullData[0].z{cell}")
        assert got_z == pytest.approx(want_z, abs=1e-9)
        # a tiny q-value's hover text is in scientific notation
        x, y = _cell_position(page, tiny["layer"], tiny["head"])
        page.mouse.move(x, y)
        page.wait_for_function(
            "() => document.querySelector('#heatmap .hoverlayer')?.textContent?.includes('q_fdr')"
        )
        hover = page.evaluate("document.querySelector('#heatmap .hoverlayer').textContent")
        assert re.search(r"q_fdr = \d\.\d\de-\d\d", hover), hover
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert seen.errors == [], f"console errors: {seen.errors}"
    assert set(seen.requests) == {url}, f"requests beyond the file: {set(seen.requests) - {url}}"


def test_phase2_reports_of_the_same_model_are_linked(small, tmp_path):
    from dataclasses import replace

    sweep = tmp_path / "smollm2-135m-ctx1536"
    for name, model in (
        ("adaptive-smollm2-135m-ctx512", "smollm2-135m"),
        ("adaptive-smollm2-135m-ctx1024", "smollm2-135m"),
        ("adaptive-gpt2-ctx512", "gpt2"),
    ):
        layout = BudgetLayout(tmp_path / name)
        layout.root.mkdir()
        layout.report.write_text("<html></html>")
        layout.curves.write_text("arm,budget\n")
        layout.config.write_text(json.dumps({"config": {"model": model}}))
    results = replace(report.load_results(small), path=sweep, config={"model": "smollm2-135m"})
    links = report.phase2_links(results)
    assert [link["name"] for link in links] == [
        "adaptive-smollm2-135m-ctx1024",
        "adaptive-smollm2-135m-ctx512",
    ]
    assert links[0]["href"] == "../adaptive-smollm2-135m-ctx1024/report.html"


@pytest.fixture(scope="module")
def planted(smollm2_sized, tmp_path_factory) -> Path:
    """The default-sized folder with one temperature share above its colour range and one
    delta R^2 below it (the rest as the sweep wrote them)."""
    folder = tmp_path_factory.mktemp("planted") / smollm2_sized.name
    shutil.copytree(smollm2_sized, folder)
    table = pd.read_csv(folder / "head_stats.csv")
    share, delta = figures.HEATMAP_METRICS["temperature_share"], figures.HEATMAP_METRICS["delta_r2"]
    table.loc[3, "temperature_share"] = share.zmax + 0.5
    table.loc[7, "delta_r2"] = delta.zmin - 0.2
    table.to_csv(folder / "head_stats.csv", index=False)
    report.build_report(folder)
    return folder


def _ready(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)


def test_report_colours_marks_and_toolbar_in_chromium(planted):
    url = (planted / "report.html").resolve().as_uri()
    table = report.load_results(planted).head_stats
    worst = table.loc[table["pearson_r"].idxmin()]
    with open_page() as seen:
        page = seen.page
        block_outside(page)
        _ready(page, url)
        # the colour of a negative r is the same before and after a metric switch, and red
        x, y = _cell_position(page, int(worst["layer"]), int(worst["head"]))
        before = pixel(page, x, y)
        page.select_option("#metric-select", "random_init_r")
        page.wait_for_function(
            "() => document.getElementById('heatmap').dataset.metric === 'random_init_r'"
        )
        page.select_option("#metric-select", "pearson_r")
        page.wait_for_function(
            "() => document.getElementById('heatmap').dataset.metric === 'pearson_r'"
        )
        x, y = _cell_position(page, int(worst["layer"]), int(worst["head"]))
        after = pixel(page, x, y)
        assert before == after and before[0] > before[2] + 40, (before, after)
        # a value outside the colour range is marked where it is, and the note counts it
        for name in ("temperature_share", "delta_r2"):
            metric = figures.HEATMAP_METRICS[name]
            values = pd.to_numeric(table[name], errors="coerce")
            outside = table[(values > metric.zmax) | (values < metric.zmin)]
            page.select_option("#metric-select", name)
            page.wait_for_function(
                f"() => document.getElementById('heatmap').dataset.metric === '{name}'"
            )
            marks = page.evaluate(
                "() => { const t = document.getElementById('heatmap')._fullData[2];"
                " return t.x.map((x, i) => [x, t.y[i], t.marker.symbol[i]]); }"
            )
            want = sorted(
                [int(r.layer), int(r.head), "triangle-up" if v > metric.zmax else "triangle-down"]
                for r, v in zip(outside.itertuples(), values[outside.index], strict=True)
            )
            assert len(want) > 0 and sorted(marks) == want
            drawn = page.locator("#heatmap .scatterlayer .trace").nth(1).locator("path.point")
            assert drawn.count() == len(want)
            assert f"{len(want)} head" in page.locator("#metric-note").inner_text()
        # every toolbar button, clicked with outside requests blocked: none sends anything
        click_every_toolbar_button(page)
    assert seen.errors == [], f"console errors: {seen.errors}"
    outside_requests = left_the_machine(seen)
    assert outside_requests == [], f"requests that would leave the machine: {outside_requests}"


def test_report_deep_links_toggle_tables_and_tooltips_in_chromium(smollm2_sized, tmp_path):
    url = (smollm2_sized / "report.html").resolve().as_uri()
    table = report.load_results(smollm2_sized).head_stats
    last = (int(table["layer"].max()), int(table["head"].min()))
    with open_page() as seen:
        page = seen.page
        # a deep link selects the head and scrolls the explorer into view
        _ready(page, f"{url}#L{last[0]}H{last[1]}")
        assert page.locator("#head-label").inner_text() == f"L{last[0]} H{last[1]}"
        top = page.evaluate("document.getElementById('explorer').getBoundingClientRect().top")
        assert -2 <= top < 50 and page.evaluate("window.scrollY") > 1000
        # an unknown head: said where the user looks, the address kept
        page.goto("about:blank")
        _ready(page, f"{url}#L99H0")
        box = page.evaluate(
            "(() => { const r = document.getElementById('head-message').getBoundingClientRect();"
            " return [r.top, r.bottom, innerHeight]; })()"
        )
        assert page.locator("#head-message").is_visible() and 0 <= box[0] and box[1] <= box[2]
        assert page.evaluate("location.hash") == "#L99H0"
        # the random-init toggle switches or labels every panel
        page.check("#model-random_init")
        page.wait_for_function(
            "() => document.querySelector('.panel[data-panel=density]').dataset.model"
            " === 'random_init'"
        )
        panels = page.evaluate(
            "Array.from(document.querySelectorAll('.panel')).map((p) => [p.dataset.panel,"
            " p.dataset.model, p.querySelector('.model-tag').textContent,"
            " p.querySelector('.model-tag').classList.contains('other')])"
        )
        assert len(panels) == 6
        for name, shown, tag, other in panels:
            if shown == "random_init":
                assert tag == "random init model", name
            else:
                assert other and tag.startswith("trained model") and "random init" in tag, name
        assert {p[0] for p in panels if p[1] == "random_init"} == {"density", "position"}
        title = page.locator("#density-fig .gtitle").text_content()
        assert "random init" in title
        # every header tooltip names its own column
        headers = page.evaluate(
            "Array.from(document.querySelectorAll('th[title]'))"
            ".map((t) => [t.textContent, t.title])"
        )
        assert len(headers) > 40
        for text, tip in headers:
            assert tip.startswith(text + ":"), (text, tip)
        # the head table sorts by a column and downloads as CSV
        page.locator("#head-table th", has_text="pearson_r").click()
        first = page.locator("#head-table tbody tr").first.locator("td").nth(2)
        assert float(first.get_attribute("data-key")) == pytest.approx(table["pearson_r"].min())
        with page.expect_download() as download:
            page.click("#csv-download")
        csv = pd.read_csv(download.value.path())
        assert len(csv) == len(table) and csv["pearson_r"].iloc[0] == pytest.approx(
            table["pearson_r"].min()
        )
    assert seen.errors == [], f"console errors: {seen.errors}"


@pytest.mark.parametrize("width", [1400, 800])
def test_report_layout_at_two_widths(smollm2_sized, width):
    url = (smollm2_sized / "report.html").resolve().as_uri()
    with open_page(width=width) as seen:
        page = seen.page
        _ready(page, url)
        # the heatmap keeps most of its width and its layer labels upright
        heat = page.evaluate(
            "(() => { const gd = document.getElementById('heatmap');"
            " return [gd._fullLayout.xaxis._length, gd.getBoundingClientRect().width]; })()"
        )
        assert heat[0] > 0.75 * heat[1], heat
        angles = page.evaluate(
            "Array.from(document.querySelectorAll('#heatmap .xtick text'))"
            ".map((t) => t.getAttribute('transform') || '')"
        )
        assert angles and not any("rotate" in a for a in angles), angles
        # the density title fits inside its figure
        fits = page.evaluate(
            "(() => { const fig = document.getElementById('density-fig').getBoundingClientRect();"
            " return Array.from(document.querySelectorAll('#density-fig .gtitle tspan, "
            "#density-fig .gtitle'))"
            ".every((t) => t.getBoundingClientRect().right <= fig.right); })()"
        )
        assert fits
        page.screenshot(path=str(ARTIFACTS / f"report-{width}.png"), full_page=True)
    assert seen.errors == [], f"console errors: {seen.errors}"
