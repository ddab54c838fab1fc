"""The plotly figure functions: pure, and the numbers in them are the numbers given."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from spectra_interp.viz import figures


@pytest.fixture
def table() -> pd.DataFrame:
    """Two layers x three heads, one passing negative head, one passing positive head."""
    rows = []
    for layer in range(2):
        for head in range(3):
            r = -0.1 * (layer * 3 + head)
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "n_tokens": 1000 + head,
                    "pearson_r": r,
                    "ci_low": r - 0.05,
                    "ci_high": r + 0.05,
                    "q_fdr": 0.5,
                    "perm_r": 0.01,
                    "random_init_r": -0.02,
                    "passes": False,
                    "sign": -1 if r < 0 else (1 if r > 0 else 0),
                }
            )
    t = pd.DataFrame(rows)
    t.loc[5, ["pearson_r", "passes", "sign"]] = [-0.7, True, -1]
    t.loc[1, ["pearson_r", "passes", "sign"]] = [0.6, True, 1]
    return t


def test_density_summary_counts_every_finite_point_and_fits_the_line():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 10, 100_000)
    y = 5.0 - 0.3 * x + rng.normal(0, 0.01, x.size)
    x[:10] = np.nan
    d = figures.density_summary(x, y, bins=30)
    assert d.counts.shape == (30, 30)
    assert d.counts.sum() == d.n == 100_000 - 10
    assert d.slope == pytest.approx(-0.3, abs=1e-3)
    assert d.intercept == pytest.approx(5.0, abs=1e-2)


def test_density_summary_of_no_points_is_empty_not_an_error():
    d = figures.density_summary(np.array([]), np.array([]))
    assert d.n == 0 and d.counts.sum() == 0 and np.isnan(d.slope)


def test_density_traces_hide_empty_bins_and_keep_counts_for_hover():
    d = figures.density_summary(np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0, 3.0]), 3)
    heat, line = figures.density_traces(d)
    assert np.isnan(heat["z"][0, 1])
    assert heat["customdata"][0, 0] == 2
    assert heat["z"][0, 0] == pytest.approx(np.log10(2))
    assert line["y"][0] == pytest.approx(1.0, abs=1e-5)


def test_fit_line_stays_inside_the_entropy_range():
    x = np.linspace(0, 10, 200)
    y = np.clip(3 - x, 0, None)
    d = figures.density_summary(x, y)
    _, line = figures.density_traces(d)
    assert line["y"].min() >= d.y_edges[0] - 1e-5
    assert line["y"].max() <= d.y_edges[-1] + 1e-5


def test_qnorm_entropy_figure_handles_100k_points_as_a_small_heatmap():
    rng = np.random.default_rng(1)
    fig = figures.qnorm_entropy_figure(rng.normal(size=100_000), rng.normal(size=100_000), "t")
    assert isinstance(fig, go.Figure)
    assert fig.data[0].type == "heatmap" and np.asarray(fig.data[0].z).size == 40 * 40
    assert fig.layout.title.text == "t"
    assert len(fig.to_json()) < 60_000


def test_position_profile_means_per_bin_and_ceiling():
    pos = np.repeat(np.arange(8), 3)
    q = pos.astype(float) * 2
    h = np.tile([0.0, 1.0, 2.0], 8)
    prof = figures.position_profile(pos, q, h, n_bins=4)
    assert list(prof["n"]) == [6, 6, 6, 6]
    assert prof["qnorm_mean"].tolist() == pytest.approx([1, 5, 9, 13])
    assert prof["entropy_mean"].tolist() == pytest.approx([1, 1, 1, 1])
    assert (prof["entropy_lo"] < prof["entropy_hi"]).all()
    assert prof["log_n_keys"].iloc[0] == pytest.approx(np.mean(np.log([1, 2])))


def test_position_figure_draws_both_quantities_and_the_ceiling():
    pos = np.arange(64)
    prof = figures.position_profile(pos, pos * 1.0, np.log(pos + 1) / 2)
    fig = figures.position_figure(prof, "L1 H2")
    assert len(fig.data) == len(figures.position_traces(prof)) == 7
    assert fig.data[6].y.tolist() == pytest.approx(prof["log_n_keys"].tolist())
    assert fig.layout.title.text == "L1 H2"


def test_heatmap_places_each_head_and_outlines_passing_ones(table):
    fig = figures.head_heatmap(table)
    heat, outline, outside = fig.data
    z = np.asarray(heat.z)
    assert z.shape == (3, 2)
    assert z[2, 1] == pytest.approx(-0.7)
    assert z[1, 0] == pytest.approx(0.6)
    assert heat.zmid == 0
    assert sorted(zip(outline.x, outline.y, strict=True)) == [(0, 1), (1, 2)]
    assert "%{text}" in heat.hovertemplate
    hover = heat.text[2][1]
    assert hover.startswith("L1 H2") and "pearson_r = -0.7" in hover
    assert "q_fdr = 0.5" in hover and "n_tokens = 1,002" in hover and "passes" in hover


def test_distribution_has_trained_and_both_controls_and_drops_missing(table):
    names = [t.name for t in figures.r_distribution(table).data]
    assert names == ["trained", "permutation", "random init"]
    names = [t.name for t in figures.r_distribution(table.drop(columns="perm_r")).data]
    assert names == ["trained", "random init"]


def test_passing_counts_and_verdict_figure_split_by_sign(table):
    counts = figures.passing_counts(table)
    assert counts.negative.tolist() == [0, 1]
    assert counts.positive.tolist() == [1, 0]
    fig = figures.verdict_figure(table)
    assert "2 of 6 heads pass (1 negative, 1 positive)" in fig.layout.title.text


def test_sign_and_passes_read_words_and_strings(table):
    t = table.assign(sign=np.where(table.sign < 0, "negative", "positive"), passes="False")
    t.loc[5, "passes"] = "True"
    assert figures.passes_mask(t).tolist() == [False] * 5 + [True]
    assert figures.sign_of(t)[5] == -1 and figures.sign_of(t)[1] == 1
    assert figures.sign_of(table.drop(columns="sign"))[5] == -1


def test_head_title_names_the_numbers(table):
    title = figures.head_title(table.iloc[5])
    assert title.startswith("L1 H2")
    assert "r = -0.700 [-0.550, -0.450]" in title and "n = 1,002" in title
    assert figures.head_title({"layer": 0, "head": 1}) == "L0 H1"


def test_format_number_writes_tiny_and_underflowed_values_legibly():
    assert figures.format_number(3.2e-7) == "3.20e-07"
    assert figures.format_number(0.0) == "< 1e-300"
    assert figures.format_number(np.float64(0.01234567)) == "0.01235"
    assert figures.format_number(np.int64(24560)) == "24,560"
    assert figures.format_number(float("nan")) == "—" and figures.format_number(None) == "—"
    assert figures.format_number(True) == "yes" and figures.format_number("document") == "document"


def test_every_heatmap_metric_colours_the_map(table):
    table = table.assign(
        partial_r_position=-0.2, pearson_r_norm_entropy=-0.1, delta_r2=-0.05,
        temperature_share=1.1, r_log_keff=0.3,
    )  # fmt: skip
    for name in figures.HEATMAP_METRICS:
        z = np.asarray(figures.head_heatmap(table, name).data[0].z)
        assert np.isfinite(z).all(), name
    diff = figures.metric_values(table, "trained_minus_random")
    np.testing.assert_allclose(diff, table["pearson_r"] - table["random_init_r"])


def test_uncertainty_and_robustness_figures(table):
    from spectra_interp.stats.criteria import Criteria

    table = table.assign(q_fdr=[0.001, 0.002, 0.5, 0.001, 0.001, 0.001])
    fig = figures.uncertainty_figure(table)
    points = np.concatenate([np.asarray(t.y) for t in fig.data])
    assert sorted(points.tolist()) == sorted(table["pearson_r"].tolist())
    robust = figures.robustness_figure(table, Criteria(r_threshold=0.5, fdr=0.01))
    x, y = np.asarray(robust.data[0].x), np.asarray(robust.data[0].y)
    assert x[0] == pytest.approx(0.3) and x[-1] == pytest.approx(0.7)
    r, q = table["pearson_r"].abs(), table["q_fdr"]
    for cut, count in zip(x, y, strict=True):
        assert count == int(((r >= cut) & (q < 0.01)).sum())


def test_scatters_curves_and_pattern(table):
    table = table.assign(gain_entropy=-0.5, slope_obs=-0.4)
    scatter = figures.random_init_scatter(table)
    passing = figures.passes_mask(table)
    r = table["pearson_r"].to_numpy()
    shown = np.r_[np.asarray(scatter.data[0].y), np.asarray(scatter.data[1].y)]
    assert shown.tolist() == np.r_[r[passing], r[~passing]].tolist()
    gain = figures.gain_scatter(table)
    assert np.asarray(gain.data[0].x).tolist() == [-0.5] * 6
    frame = pd.DataFrame(
        {"layer": 0, "head": 1, "scale": [0.5, 1.0, 2.0], "mean_entropy": [3.0, 2.0, 1.0]}
    )
    curves = figures.alpha_curves(frame, [(0, 1)])
    assert np.asarray(curves.data[0].y).tolist() == [3.0, 2.0, 1.0]
    heat = figures.pattern_heatmap(["a", "b\n"], np.array([[1.0, 0.0], [0.25, 0.75]]))
    assert np.isnan(np.asarray(heat.data[0].z, dtype=float)[0, 1])
    assert heat.data[0].text[1][1] == "'b⏎' → 'b⏎'"


def test_token_figure_puts_each_value_on_its_token():
    fig = figures.token_figure(
        ["a", "b\n", "c"], np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.5, 0.2])
    )
    assert list(fig.data[0].x) == ["0:a", "1:b⏎", "2:c"]
    assert np.asarray(fig.data[1].y).tolist() == [0.0, 0.5, 0.2]
    with pytest.raises(ValueError, match="3 tokens, 2"):
        figures.token_figure(["a", "b", "c"], np.ones(2), np.ones(3))


def test_heatmap_colours_are_fixed_lists_with_negative_red(table):
    for name, metric in figures.HEATMAP_METRICS.items():
        fig = figures.head_heatmap(table.assign(temperature_share=1.0, delta_r2=0.0), name)
        heat = fig.data[0]
        assert (heat.zmin, heat.zmax) == (metric.zmin, metric.zmax), name
        assert heat.zmid == metric.zmid and metric.zmin < metric.zmid < metric.zmax
        assert metric.label in heat.hovertemplate, "the hover names the metric"
        assert not isinstance(heat.colorscale, str)
    low, high = figures.HEATMAP_METRICS["pearson_r"].colorscale[0][1], figures.RED_BLUE[-1][1]
    red = [int(v) for v in low.removeprefix("rgb(").rstrip(")").split(",")]
    blue = [int(v) for v in high.removeprefix("rgb(").rstrip(")").split(",")]
    assert red[0] > red[2] and blue[2] > blue[0], "r < 0 red, r > 0 blue"
    assert figures.HEATMAP_METRICS["temperature_share"].zmid == 1


def test_values_outside_the_colour_range_are_marked(table):
    t = table.assign(temperature_share=np.linspace(-2.0, 4.0, len(table)))
    metric = figures.HEATMAP_METRICS["temperature_share"]
    marks = figures.out_of_range(t, "temperature_share")
    values = t["temperature_share"].to_numpy()
    outside = (values < metric.zmin) | (values > metric.zmax)
    assert len(marks["x"]) == outside.sum() > 0
    want = ["triangle-up" if v > metric.zmax else "triangle-down" for v in values[outside]]
    assert marks["symbol"] == want
    fig = figures.head_heatmap(t, "temperature_share")
    assert list(fig.data[2].x) == marks["x"] and list(fig.data[2].marker.symbol) == want


def test_robustness_marks_the_count_the_criterion_needs(table):
    from spectra_interp.stats.criteria import Criteria

    criteria = Criteria(min_share=0.3, fdr=0.9)
    needed = figures.heads_needed(criteria, len(table))
    assert needed / len(table) >= 0.3 and (needed - 1) / len(table) < 0.3
    fig = figures.robustness_figure(table, criteria)
    counts = figures.robustness_counts(table, criteria)
    assert fig.layout.shapes[0].y0 == needed
    holding = counts[counts["heads"] >= needed]
    assert f"holds up to |r| ≥ {holding['cutoff'].iloc[-1]:.2f}" in fig.data[1].text[0]
    assert figures.heads_needed(Criteria(min_share=0.1), 270) == 27


def test_random_init_scatter_has_a_legend(table):
    fig = figures.random_init_scatter(table)
    names = [t.name for t in fig.data]
    assert names == ["passes (trained model)", "does not pass", "diagonal: no change"]
    assert fig.layout.showlegend is not False
    assert sum(len(t.x) for t in fig.data[:2]) == len(table)


def test_every_figure_uses_the_registered_template(table):
    import plotly.io as pio

    assert figures.TEMPLATE in pio.templates
    for fig in (
        figures.head_heatmap(table), figures.uncertainty_figure(table),
        figures.robustness_figure(table), figures.random_init_scatter(table),
        figures.r_distribution(table), figures.verdict_figure(table),
    ):  # fmt: skip
        margin = pio.templates[figures.TEMPLATE].layout.margin
        assert fig.layout.template.layout.margin.l == margin.l
