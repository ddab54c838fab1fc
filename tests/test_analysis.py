"""Tests for spectra_interp.analysis: sums, correlations, cluster inference, BH, controls."""

import json
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from spectra_interp.analysis import (
    MOMENTS,
    N_MOMENTS,
    Moment,
    benjamini_hochberg,
    cluster_bootstrap_ci,
    cluster_p_value,
    correlations,
    head_table,
    naive_p_value,
    sample_frame,
    token_sample,
    verdict,
    verdict_text,
    window_stats,
)
from spectra_interp.errors import SpectraError


def causal_keys(n_pos: int) -> np.ndarray:
    return np.arange(n_pos) + 1


def simulate(
    n_windows: int,
    n_pos: int,
    n_layers: int,
    n_heads: int,
    *,
    seed: int,
    beta: float = 0.0,
    sd_a: float = 0.0,
    sd_b: float = 0.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Windows of (qnorm, entropy) [layer, head, pos]: x = 50 + a_w + e, y = 30 + b_w + beta*(x-50)
    + f, with window effects a_w ~ N(0, sd_a), b_w ~ N(0, sd_b) independent, e, f ~ N(0, 1).
    Every head is an independent replicate."""
    rng = np.random.default_rng(seed)
    shape = (n_layers, n_heads)
    out = []
    for _ in range(n_windows):
        a = rng.normal(0, sd_a, shape)[..., None] if sd_a else 0.0
        b = rng.normal(0, sd_b, shape)[..., None] if sd_b else 0.0
        x = 50 + a + rng.normal(0, 1, (*shape, n_pos))
        y = 30 + b + beta * (x - 50) + rng.normal(0, 1, (*shape, n_pos))
        out.append((x, y))
    return out


def stack(windows, skip_first: int = 1, seed: int = 0) -> np.ndarray:
    return np.stack(
        [
            window_stats(q, h, causal_keys(q.shape[-1]), skip_first=skip_first, perm_seed=(seed, i))
            for i, (q, h) in enumerate(windows)
        ]
    )


def test_moment_layout():
    assert N_MOMENTS == len(MOMENTS) == 17
    assert MOMENTS[Moment.SXY] == "sxy"
    windows = simulate(2, 20, 2, 3, seed=0)
    s = stack(windows)
    assert s.shape == (2, 2, 3, N_MOMENTS) and s.dtype == np.float64
    np.testing.assert_array_equal(s[..., Moment.N], 19)


def test_sums_add_over_positions_and_windows():
    (q, h), (q2, h2), (q3, h3) = simulate(3, 64, 2, 3, seed=1, beta=-0.5)
    nk = causal_keys(64)
    whole = window_stats(q, h, nk, skip_first=2, perm_seed=0)
    first = window_stats(q[..., :30], h[..., :30], nk[:30], skip_first=2, perm_seed=0)
    second = window_stats(q, h, nk, skip_first=30, perm_seed=0)
    merged = first + second
    exact = [m for m in Moment if m != Moment.SXPY]  # the permutation differs between the splits
    np.testing.assert_allclose(merged[..., exact], whole[..., exact], rtol=1e-12)
    a = window_stats(q, h, nk, skip_first=1, perm_seed=0)
    b = window_stats(q2, h2, nk, skip_first=1, perm_seed=1)
    c = window_stats(q3, h3, nk, skip_first=1, perm_seed=2)
    np.testing.assert_allclose((a + b) + c, a + (b + c), rtol=1e-12)
    np.testing.assert_allclose(c + a + b, np.stack([a, b, c]).sum(0), rtol=1e-12)


def test_head_table_same_for_merged_runs():
    windows = simulate(10, 50, 2, 2, seed=2, beta=-0.8, sd_a=1.0)
    s = stack(windows)
    run1, run2 = s[:4], s[4:]  # e.g. an interrupted run resumed later
    t_whole = head_table(s, n_boot=200, seed=3)
    t_merged = head_table(np.concatenate([run1, run2]), n_boot=200, seed=3)
    pd.testing.assert_frame_equal(t_whole, t_merged)


@pytest.mark.parametrize(("mean_q", "tol"), [(50.0, 1e-11), (1000.0, 1e-7)])
def test_correlations_match_numpy_with_large_means(mean_q: float, tol: float):
    """Raw sums lose about eps * (mean / sd)^2 per variable (log‖q‖ included): ~1e-12 at
    ‖q‖ ~ 50 +- 1, ~1e-8 at 1000 +- 1."""
    rng = np.random.default_rng(4)
    n_pos, skip = 300, 3
    xs, ys, xps = [], [], []
    stats = []
    for w in range(5):
        x = mean_q + rng.normal(0, 1, (2, 3, n_pos))
        y = 7 - 0.6 * (x - mean_q) + rng.normal(0, 0.5, (2, 3, n_pos))
        stats.append(window_stats(x, y, causal_keys(n_pos), skip_first=skip, perm_seed=(9, w)))
        perm = np.random.default_rng((9, w)).permutation(n_pos - skip)
        xs.append(x[..., skip:])
        ys.append(y[..., skip:])
        xps.append(x[..., skip:][..., perm])
    x, y, xp = (np.concatenate(v, axis=-1) for v in (xs, ys, xps))
    pos = np.tile(np.arange(skip, n_pos), 5)
    yn = y / np.log(pos + 1)
    c = correlations(np.stack(stats).sum(0))
    for li in range(2):
        for hi in range(3):
            xx, yy = x[li, hi], y[li, hi]
            assert c["pearson_r"][li, hi] == pytest.approx(np.corrcoef(xx, yy)[0, 1], abs=tol)
            assert c["pearson_r_log"][li, hi] == pytest.approx(
                np.corrcoef(np.log(xx), yy)[0, 1], abs=tol
            )
            assert c["pearson_r_norm_entropy"][li, hi] == pytest.approx(
                np.corrcoef(xx, yn[li, hi])[0, 1], abs=tol
            )
            assert c["perm_r"][li, hi] == pytest.approx(np.corrcoef(xp[li, hi], yy)[0, 1], abs=tol)
            assert c["mean_qnorm"][li, hi] == pytest.approx(xx.mean(), rel=1e-12)
    assert c["n"][0, 0] == 5 * (n_pos - skip)


def test_partial_r_matches_regression_residuals():
    rng = np.random.default_rng(5)
    n_pos = 400
    pos = np.arange(n_pos)
    z = np.log(pos + 1)
    windows = []
    for _ in range(4):
        x = 30 + 2 * z + rng.normal(0, 1, (1, 2, n_pos))  # both depend on position
        y = 5 + 0.8 * z - 0.3 * (x - 30) + rng.normal(0, 0.5, (1, 2, n_pos))
        windows.append((x, y))
    c = correlations(stack(windows, skip_first=1).sum(0))
    zz = np.tile(z[1:], 4)
    design = np.column_stack([np.ones_like(zz), zz])
    for hi in range(2):
        x = np.concatenate([w[0][0, hi, 1:] for w in windows])
        y = np.concatenate([w[1][0, hi, 1:] for w in windows])
        rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
        ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
        expected = np.corrcoef(rx, ry)[0, 1]
        assert c["partial_r_position"][0, hi] == pytest.approx(expected, abs=1e-9)
        assert abs(c["partial_r_position"][0, hi] - c["pearson_r"][0, hi]) > 0.01


def test_known_correlation_with_shared_window_effects():
    """x = 50 + a_w + e, y = 30 + b_w + beta (x - 50) + f: windows share random effects."""
    beta, sd_a, sd_b = -0.7, 0.8, 0.6
    var_x = sd_a**2 + 1
    true_r = beta * var_x / np.sqrt(var_x * (beta**2 * var_x + sd_b**2 + 1))
    n_pos, n_heads = 120, 150
    windows = simulate(60, n_pos, 1, n_heads, seed=6, beta=beta, sd_a=sd_a, sd_b=sd_b)
    s = stack(windows)
    sample = pd.concat(
        [
            sample_frame(
                token_sample(q, h, causal_keys(n_pos), skip_first=1, k=n_pos, seed=i), window_id=i
            )
            for i, (q, h) in enumerate(windows)
        ]
    )
    table = head_table(s, sample, n_boot=1000, seed=0)
    # pooled estimates agree with scipy on the same pooled tokens
    for hi in (0, 7):
        x = np.concatenate([q[0, hi, 1:] for q, _ in windows])
        y = np.concatenate([h[0, hi, 1:] for _, h in windows])
        row = table.iloc[hi]
        ref = sps.pearsonr(x, y)
        assert row["pearson_r"] == pytest.approx(ref.statistic, abs=1e-10)
        assert row["p_naive"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
        rho = sps.spearmanr(x.astype(np.float32), y.astype(np.float32)).statistic  # as sampled
        assert row["spearman_rho"] == pytest.approx(rho, abs=1e-10)
        assert row["n_tokens"] == x.size and row["n_windows"] == 60
    # every head is an independent replicate: the 95% cluster CI covers the truth ~95% of the time
    covered = (table["ci_low"] <= true_r) & (true_r <= table["ci_high"])
    assert covered.mean() >= 0.88
    assert table["pearson_r"].mean() == pytest.approx(true_r, abs=0.01)
    assert (table["ci_low"] < table["pearson_r"]).all() and (
        table["pearson_r"] < table["ci_high"]
    ).all()
    assert (table["sign"] == "negative").all()


def test_bootstrap_matches_explicit_resampling():
    windows = simulate(12, 40, 1, 2, seed=7, beta=0.4, sd_a=1.0, sd_b=1.0)
    s = stack(windows)
    low, high = cluster_bootstrap_ci(s, n_boot=50, seed=11, level=0.9)
    rng = np.random.default_rng(11)
    counts = rng.multinomial(12, np.full(12, 1 / 12), size=50)
    for hi in range(2):
        reps = []
        for row in counts:
            idx = np.repeat(np.arange(12), row)
            x = np.concatenate([windows[i][0][0, hi, 1:] for i in idx])
            y = np.concatenate([windows[i][1][0, hi, 1:] for i in idx])
            reps.append(np.corrcoef(x, y)[0, 1])
        assert low[0, hi] == pytest.approx(np.quantile(reps, 0.05), abs=1e-10)
        assert high[0, hi] == pytest.approx(np.quantile(reps, 0.95), abs=1e-10)


def test_cluster_p_matches_explicit_jackknife():
    windows = simulate(9, 30, 1, 1, seed=8, beta=-0.3, sd_a=1.0, sd_b=1.0)
    p, se = cluster_p_value(stack(windows))
    xs = [q[0, 0, 1:] for q, _ in windows]
    ys = [h[0, 0, 1:] for _, h in windows]
    r = np.corrcoef(np.concatenate(xs), np.concatenate(ys))[0, 1]
    z_loo = np.array(
        [
            np.arctanh(
                np.corrcoef(
                    np.concatenate(xs[:i] + xs[i + 1 :]), np.concatenate(ys[:i] + ys[i + 1 :])
                )[0, 1]
            )
            for i in range(9)
        ]
    )
    se_ref = np.sqrt(8 / 9 * ((z_loo - z_loo.mean()) ** 2).sum())
    assert se[0, 0] == pytest.approx(se_ref, rel=1e-9)
    assert p[0, 0] == pytest.approx(2 * sps.t.sf(abs(np.arctanh(r)) / se_ref, 8), rel=1e-9)


def test_window_level_effect_only_is_not_significant_at_cluster_level():
    """8 windows x 2000 tokens; x and y share nothing but independent window-level shifts, so
    the true correlation is 0. Pooled r picks up the chance correlation of 8 window means:
    token-level p is tiny, window-level p is not. Each of 300 heads is an independent replicate."""
    n_heads = 300
    windows = simulate(8, 2001, 1, n_heads, seed=9, sd_a=3.0, sd_b=3.0)
    table = head_table(stack(windows), n_boot=300, seed=0)
    assert (table["p_naive"] < 1e-6).mean() > 0.8
    assert table["pearson_r"].abs().max() > 0.5  # large pooled r from 8 window means alone ...
    rejections = (table["p_cluster"] < 0.05).mean()
    assert rejections <= 0.10  # ... but cluster inference holds its nominal 5% level
    assert (table["p_cluster"] < 0.01).mean() <= 0.03
    assert not table["passes"].any()
    summary = verdict(table)
    assert summary["passing"]["total"] == 0
    assert not summary["criteria"]["significance"]["met"]


def test_within_window_effect_is_significant_with_few_windows():
    windows = simulate(8, 2001, 1, 20, seed=10, beta=-0.8, sd_a=0.3, sd_b=0.3)
    table = head_table(stack(windows), n_boot=300, seed=0)
    assert (table["p_cluster"] < 1e-3).all()
    assert table["passes"].all() and (table["sign"] == "negative").all()


def test_randomization_control_near_zero():
    windows = simulate(16, 257, 2, 8, seed=12, beta=-1.0)
    table = head_table(stack(windows, seed=0), n_boot=100)
    assert (table["pearson_r"] < -0.6).all()
    assert abs(table["perm_r"].mean()) < 0.02
    assert table["perm_r"].abs().max() < 0.1
    again = head_table(stack(windows, seed=0), n_boot=100)
    np.testing.assert_array_equal(table["perm_r"], again["perm_r"])
    other = head_table(stack(windows, seed=1), n_boot=100)
    assert not np.array_equal(table["perm_r"], other["perm_r"])
    assert verdict(table)["criteria"]["randomization_control"]["met"]


def test_within_window_decomposition_and_permutation_nulls():
    """Windows differ in mean ‖q‖, and H follows ‖q‖ also between windows: pooled perm_r keeps
    that between-window part, perm_r_within (window means removed) is ~0."""
    n_pos = 201
    windows = simulate(30, n_pos, 2, 9, seed=20, beta=-0.6, sd_a=0.5, sd_b=0.5)
    s = stack(windows, seed=5)
    table = head_table(s, n_boot=100)
    assert table["perm_r"].mean() < -0.05
    assert abs(table["perm_r_within"].mean()) < 0.02
    for li, hi in [(0, 0), (1, 8)]:
        xs = [q[li, hi, 1:] for q, _ in windows]
        ys = [h[li, hi, 1:] for _, h in windows]
        xps = [x[np.random.default_rng((5, i)).permutation(n_pos - 1)] for i, x in enumerate(xs)]
        centre = [v - v.mean() for v in xs + ys + xps]
        cx, cy, cp = (np.concatenate(centre[k * 30 : (k + 1) * 30]) for k in range(3))
        row = table[(table["layer"] == li) & (table["head"] == hi)].iloc[0]
        assert row["within_window_r"] == pytest.approx(np.corrcoef(cx, cy)[0, 1], abs=1e-10)
        assert row["perm_r_within"] == pytest.approx(
            (cp @ cy) / np.sqrt((cx @ cx) * (cy @ cy)), abs=1e-10
        )
    pooled = verdict(table)
    exact = verdict(table, perm_column="perm_r_within")
    assert not pooled["criteria"]["randomization_control"]["met"]
    assert exact["criteria"]["randomization_control"]["met"]
    assert exact["controls"]["within_window"]["mean_abs_within_window_r"] > 0.4
    assert "window means removed" in verdict_text(exact)


def test_benjamini_hochberg_hand_worked():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.060, 0.074, 0.205, 0.212, 0.216])
    # m/j * p_(j): .01 .04 .13 .1025 .084 .1 .10571 .25625 .23556 .216; running min from the top
    expected = np.array([0.01, 0.04, 0.084, 0.084, 0.084, 0.1, 0.074 * 10 / 7, 0.216, 0.216, 0.216])
    order = np.random.default_rng(0).permutation(10)
    np.testing.assert_allclose(benjamini_hochberg(p[order]), expected[order], rtol=1e-12)
    with_nan = benjamini_hochberg(np.array([0.01, np.nan, 0.04, 0.03]))
    np.testing.assert_allclose(with_nan, [0.03, np.nan, 0.04, 0.04])
    np.testing.assert_allclose(benjamini_hochberg(np.array([0.9, 0.8])), [0.9, 0.9])
    rand = np.random.default_rng(1).uniform(0, 0.2, 500) ** 2
    np.testing.assert_allclose(benjamini_hochberg(rand), sps.false_discovery_control(rand))


def test_naive_p_matches_pearsonr_and_handles_edges():
    x, y = np.random.default_rng(2).normal(size=(2, 50))
    ref = sps.pearsonr(x, y)
    assert naive_p_value(np.array(ref.statistic), np.array(50.0)) == pytest.approx(ref.pvalue)
    out = naive_p_value(np.array([np.nan, 1.0, 0.3]), np.array([10.0, 10.0, 2.0]))
    assert np.isnan(out[0]) and out[1] == 0.0 and np.isnan(out[2])


def test_zero_variance_head_gives_nan_without_warnings():
    windows = simulate(6, 60, 1, 3, seed=13, beta=-0.9)
    for _, h in windows:
        h[0, 1] = 2.5  # a head with constant entropy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = head_table(stack(windows), n_boot=50)
        summary = verdict(table)
    json.dumps(summary, allow_nan=False)
    row = table.iloc[1]
    for col in ("pearson_r", "ci_low", "ci_high", "p_naive", "p_cluster", "q_fdr", "perm_r"):
        assert np.isnan(row[col]), col
    assert not row["passes"] and row["sign"] == "none"
    assert table.iloc[0]["passes"] and table.iloc[2]["passes"]
    assert summary["heads_with_r"] == 2


def test_single_window_has_no_cluster_inference():
    table = head_table(stack(simulate(1, 100, 1, 2, seed=14, beta=-1.0)), n_boot=20)
    assert table["p_cluster"].isna().all() and table["ci_low"].isna().all()
    assert not table["passes"].any()
    assert table["pearson_r"].notna().all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip_first": 10}, "leaves no positions"),
        ({"skip_first": 0}, "key"),
        ({"skip_first": -1}, ">= 0"),
    ],
)
def test_window_stats_bad_positions(kwargs, match):
    q = np.full((1, 1, 10), 2.0)
    with pytest.raises(SpectraError, match=match):
        window_stats(q, q, causal_keys(10), perm_seed=0, **kwargs)
    with pytest.raises(SpectraError, match=match):
        token_sample(q, q, causal_keys(10), k=3, seed=0, **kwargs)


def test_window_stats_bad_inputs():
    q = np.full((1, 2, 8), 2.0)
    nk = causal_keys(8)
    with pytest.raises(SpectraError, match="same"):
        window_stats(q, q[:, :1], nk, skip_first=1, perm_seed=0)
    with pytest.raises(SpectraError, match="n_keys"):
        window_stats(q, q, nk[:5], skip_first=1, perm_seed=0)
    with pytest.raises(SpectraError, match="n_keys"):
        window_stats(q, q, nk.astype(float), skip_first=1, perm_seed=0)
    bad = q.copy()
    bad[0, 0, 4] = 0.0
    with pytest.raises(SpectraError, match="positive"):
        window_stats(bad, q, nk, skip_first=1, perm_seed=0)
    bad[0, 0, 4] = np.nan
    with pytest.raises(SpectraError, match="entropy"):
        window_stats(q, bad, nk, skip_first=1, perm_seed=0)
    with pytest.raises(SpectraError, match="expected"):
        head_table(np.zeros((3, 2, 2, 5)))
    with pytest.raises(SpectraError, match="match"):
        s = stack(simulate(3, 20, 1, 2, seed=0))
        head_table(s, random_init_stats=s[:, :, :1])


def test_token_sample_reproducible_and_shared_across_heads():
    ((q, h),) = simulate(1, 100, 2, 3, seed=15)
    nk = causal_keys(100)
    a = token_sample(q, h, nk, skip_first=5, k=10, seed=(0, 3))
    b = token_sample(q, h, nk, skip_first=5, k=10, seed=(0, 3))
    c = token_sample(q, h, nk, skip_first=5, k=10, seed=(0, 4))
    np.testing.assert_array_equal(a["pos"], b["pos"])
    assert not np.array_equal(a["pos"], c["pos"])
    assert a["pos"].min() >= 5 and np.all(np.diff(a["pos"]) > 0)
    np.testing.assert_array_equal(a["n_keys"], a["pos"] + 1)
    np.testing.assert_allclose(a["qnorm"], q[..., a["pos"]].astype(np.float32))
    np.testing.assert_allclose(a["entropy"], h[..., a["pos"]].astype(np.float32))
    assert a["qnorm"].shape == (2, 3, 10) and a["qnorm"].dtype == np.float32
    everything = token_sample(q, h, nk, skip_first=95, k=10, seed=0)
    np.testing.assert_array_equal(everything["pos"], np.arange(95, 100))
    frame = sample_frame(a, window_id=7, model="random_init")
    assert list(frame.columns) == [
        "model",
        "window_id",
        "layer",
        "head",
        "pos",
        "n_keys",
        "qnorm",
        "entropy",
    ]
    assert len(frame) == 60 and (frame["window_id"] == 7).all()
    row = frame[(frame["layer"] == 1) & (frame["head"] == 2)].iloc[4]
    assert row["pos"] == a["pos"][4] and row["qnorm"] == a["qnorm"][1, 2, 4]
    with pytest.raises(SpectraError, match="k >= 1"):
        token_sample(q, h, nk, skip_first=1, k=0, seed=0)


def test_head_table_columns_and_random_init():
    trained = stack(simulate(6, 80, 2, 3, seed=16, beta=-1.0))
    random_init = stack(simulate(5, 80, 2, 3, seed=17))
    table = head_table(trained, random_init_stats=random_init, n_boot=100)
    required = (
        "layer head n_tokens n_windows pearson_r pearson_r_log spearman_rho partial_r_position "
        "pearson_r_norm_entropy ci_low ci_high p_naive p_cluster q_fdr perm_r random_init_r "
        "passes sign"
    ).split()
    assert set(required) <= set(table.columns)
    assert len(table) == 6 and list(table["layer"]) == [0, 0, 0, 1, 1, 1]
    assert list(table["head"]) == [0, 1, 2, 0, 1, 2]
    expected = correlations(random_init.sum(0))["pearson_r"].ravel()
    np.testing.assert_allclose(table["random_init_r"], expected)
    assert table["spearman_rho"].isna().all()
    assert head_table(trained, n_boot=10)["random_init_r"].isna().all()
    mixed = pd.concat(
        [
            sample_frame(
                token_sample(q, h, causal_keys(80), skip_first=1, k=5, seed=0), window_id=0, model=m
            )
            for (q, h), m in zip(
                simulate(2, 80, 2, 3, seed=18), ["trained", "random_init"], strict=True
            )
        ]
    )
    with pytest.raises(SpectraError, match="mixes models"):
        head_table(trained, mixed, n_boot=10)


def make_table(rs, qs, layers, perm=0.0, random_r=np.nan):
    n = len(rs)
    return pd.DataFrame(
        {
            "layer": layers,
            "head": np.arange(n),
            "pearson_r": rs,
            "q_fdr": qs,
            "perm_r": np.full(n, perm),
            "random_init_r": np.full(n, random_r),
            "partial_r_position": np.asarray(rs) * 0.5,
        }
    )


def test_verdict_counts_and_criteria():
    rs = [-0.8, -0.6, 0.7, -0.55, -0.2, 0.1, -0.9, np.nan, -0.3, 0.05]
    qs = [0.001, 0.005, 0.0001, 0.02, 0.5, 0.9, 0.001, np.nan, 0.0001, 0.7]
    table = make_table(rs, qs, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1], perm=0.001)
    s = verdict(table)
    assert s["heads_total"] == 10 and s["heads_with_r"] == 9
    assert s["passing"] == {
        "total": 4,
        "negative": 3,
        "positive": 1,
        "share_of_heads": 0.4,
        "share_negative": 0.75,
    }
    assert [(d["layer"], d["passing"], d["negative"], d["positive"]) for d in s["per_layer"]] == [
        (0, 3, 2, 1),
        (1, 1, 1, 0),
    ]
    c = s["criteria"]
    assert c["effect_size"]["met"] and c["effect_size"]["heads"] == 5
    assert c["significance"]["met"] and c["significance"]["strong_heads_not_significant"] == 1
    assert c["randomization_control"]["met"]
    assert s["all_criteria_met"]
    assert not s["controls"]["random_init"]["available"]
    json.dumps(s, allow_nan=False)
    text = verdict_text(s)
    assert "passing" in text and "75% negative" in text and "all seed criteria met" in text

    strict = verdict(table, alpha=0.0001)
    assert strict["passing"]["total"] == 0 and strict["passing"]["share_negative"] is None
    assert not strict["criteria"]["significance"]["met"] and not strict["all_criteria_met"]
    assert "NOT met" in verdict_text(strict)

    biased = verdict(make_table(rs, qs, [0] * 10, perm=0.03, random_r=0.1))
    assert not biased["criteria"]["randomization_control"]["met"]
    assert biased["controls"]["random_init"]["mean_r"] == pytest.approx(0.1)
    json.dumps(biased, allow_nan=False)

    few = make_table([-0.9] + [0.0] * 19, [0.001] + [0.5] * 19, [0] * 20)
    assert not verdict(few)["criteria"]["effect_size"]["met"]  # 1 of 20 heads is 5% < 10%


def test_head_table_speed_at_llama_scale():
    """64 windows x 1024 heads x 1000 bootstrap replicates must stay interactive."""
    s = stack(simulate(64, 40, 32, 32, seed=19, beta=-0.5, sd_a=1.0))
    start = time.perf_counter()
    table = head_table(s, n_boot=1000)
    assert time.perf_counter() - start < 15
    assert len(table) == 1024 and table["ci_low"].notna().all()
