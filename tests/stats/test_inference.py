"""Cluster inference: jackknife p, bootstrap CI, BH q-values, the naive p."""

import numpy as np
import pytest
from scipy import stats as sps
from synthetic import simulate, stack

from spectra_interp.stats.inference import (
    fdr_q_values,
    jackknife_p_value,
    naive_p_value,
    r_bootstrap_ci,
)
from spectra_interp.stats.table import head_table
from spectra_interp.stats.verdict import verdict


def test_bootstrap_matches_explicit_resampling():
    windows = simulate(12, 40, 1, 2, seed=7, beta=0.4, sd_a=1.0, sd_b=1.0)
    s = stack(windows)
    low, high = r_bootstrap_ci(s, n_boot=50, seed=11, level=0.9)
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
    p, se = jackknife_p_value(stack(windows))
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
    rejections = (table["p_jackknife"] < 0.05).mean()
    assert rejections <= 0.10  # ... but cluster inference holds its nominal 5% level
    assert (table["p_jackknife"] < 0.01).mean() <= 0.03
    assert not table["passes"].any()
    summary = verdict(table)
    assert summary.passing.total == 0
    assert not summary.criteria.significance.met


def test_within_window_effect_is_significant_with_few_windows():
    windows = simulate(8, 2001, 1, 20, seed=10, beta=-0.8, sd_a=0.3, sd_b=0.3)
    table = head_table(stack(windows), n_boot=300, seed=0)
    assert (table["p_jackknife"] < 1e-3).all()
    assert table["passes"].all() and (table["sign"] == "negative").all()


def test_benjamini_hochberg_hand_worked():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.060, 0.074, 0.205, 0.212, 0.216])
    # m/j * p_(j): .01 .04 .13 .1025 .084 .1 .10571 .25625 .23556 .216; running min from the top
    expected = np.array([0.01, 0.04, 0.084, 0.084, 0.084, 0.1, 0.074 * 10 / 7, 0.216, 0.216, 0.216])
    order = np.random.default_rng(0).permutation(10)
    np.testing.assert_allclose(fdr_q_values(p[order]), expected[order], rtol=1e-12)
    with_nan = fdr_q_values(np.array([0.01, np.nan, 0.04, 0.03]))
    np.testing.assert_allclose(with_nan, [0.03, np.nan, 0.04, 0.04])
    np.testing.assert_allclose(fdr_q_values(np.array([0.9, 0.8])), [0.9, 0.9])
    rand = np.random.default_rng(1).uniform(0, 0.2, 500) ** 2
    np.testing.assert_allclose(fdr_q_values(rand), sps.false_discovery_control(rand))


def test_naive_p_matches_pearsonr_and_handles_edges():
    x, y = np.random.default_rng(2).normal(size=(2, 50))
    ref = sps.pearsonr(x, y)
    assert naive_p_value(np.array(ref.statistic), np.array(50.0)) == pytest.approx(ref.pvalue)
    out = naive_p_value(np.array([np.nan, 1.0, 0.3]), np.array([10.0, 10.0, 2.0]))
    assert np.isnan(out[0]) and out[1] == 0.0 and np.isnan(out[2])


def test_single_window_has_no_cluster_inference():
    table = head_table(stack(simulate(1, 100, 1, 2, seed=14, beta=-1.0)), n_boot=20)
    assert table["p_jackknife"].isna().all() and table["ci_low"].isna().all()
    assert not table["passes"].any()
    assert table["pearson_r"].notna().all()
