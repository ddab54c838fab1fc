"""The pages' shared machinery: one jinja2 environment that escapes, the shipped plotly.js
bundle (its licence, version and trace types), and the toolbar settings."""

import re
from pathlib import Path

import plotly.io as pio
import pytest
from plotly.offline import get_plotlyjs, get_plotlyjs_version

import spectra_interp
from spectra_interp.viz import figures, page

VIZ = Path(spectra_interp.__file__).parent / "viz"
ASSETS = Path(spectra_interp.__file__).parent / "assets" / "plotly"


def test_html_is_made_by_templates_only():
    """No page markup in the modules that make pages (figures.py writes plotly's own label
    markup, <br> and <b>, which plotly.js draws)."""
    tag = re.compile(r"<(table|tr|td|th|span|div|p|b|a|ul|li|section|h\d)[\s>/]")
    for path in (VIZ / n for n in ("report.py", "budget_report.py", "compare.py", "page.py")):
        assert not tag.search(path.read_text(encoding="utf-8")), path.name


def test_values_are_escaped_and_nested():
    out = page.render_value({"x": "<script>alert(1)</script>", "y": [1, 2.5], "z": None})
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "1, 2.5" in out and "—" in out
    assert page.template_environment().autoescape is True


def test_the_bundle_is_plotlys_cartesian_distribution_with_its_licence():
    assert (
        "MIT" in (ASSETS / "LICENSE").read_text() and "Plotly" in (ASSETS / "LICENSE").read_text()
    )
    assert page.plotly_bundle_version() == get_plotlyjs_version()
    assert len(page.plotly_js()) < 0.5 * len(get_plotlyjs())
    assert "</script" not in page.plotly_js()


def test_the_bundle_draws_every_trace_the_pages_use(tmp_path):
    from fake_results import make_fake_results

    from spectra_interp.budget.arms import ARMS
    from spectra_interp.viz import budget_report, report

    folder = make_fake_results(tmp_path / "run", 3, 2)
    data = report.page_data(
        report.load_results(folder),
        report.load_results(folder).head_stats,
        report.load_results(folder).criteria,
    )
    figs = [f for f in [*data["figures"].values(), *data["templates"].values()] if f]
    used = {t.get("type", "scatter") for f in figs for t in f["data"]}
    curves = budget_report.quality_figure(
        __import__("pandas").DataFrame(
            {"arm": list(ARMS), "keys_frac": 0.5, "kl_mean": 0.1, "kl_ci_low": 0.05,
             "kl_ci_high": 0.2}
        ),
        "kl_mean",
        "KL",
    )  # fmt: skip
    used |= {t.type for t in curves.data}
    scripts = "".join(
        (VIZ / "templates" / n).read_text() for n in ("report.js", "budget_report.js")
    )
    trace_types = set(pio.templates["plotly"].data.to_plotly_json())  # every plotly trace type
    used |= set(re.findall(r"type: '(\w+)'", scripts)) & trace_types
    assert {"heatmap", "scatter", "bar", "box"} <= used
    assert used <= set(page.bundle_trace_types()), used - set(page.bundle_trace_types())


def test_no_toolbar_button_can_send_data():
    config = page.PLOTLY_CONFIG
    assert config["showSendToCloud"] is False and config["showEditInChartStudio"] is False
    assert "sendDataToCloud" in config["modeBarButtonsToRemove"]
    assert config["displaylogo"] is False


@pytest.mark.parametrize("name", list(figures.HEATMAP_METRICS))
def test_every_metric_documents_its_scale(name):
    metric = figures.HEATMAP_METRICS[name]
    note = metric.scale_note()
    assert f"{metric.zmin:g} to {metric.zmax:g}" in note and f"centred on {metric.zmid:g}" in note
