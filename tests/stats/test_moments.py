"""Per-window sums: layout, merging, correlations against numpy, bad input."""

import json
import warnings

import numpy as np
import pytest
from synthetic import causal_keys, sample_of, simulate, stack, window_stats

from spectra_interp.errors import SpectraError
from spectra_interp.stats.moments import MOMENTS, N_MOMENTS, Moment, correlations
from spectra_interp.stats.table import head_table
from spectra_interp.stats.verdict import verdict


def test_moment_layout():
    assert N_MOMENTS == len(MOMENTS) == 18
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


def test_zero_variance_head_gives_nan_without_warnings():
    windows = simulate(6, 60, 1, 3, seed=13, beta=-0.9)
    for _, h in windows:
        h[0, 1] = 2.5  # a head with constant entropy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = head_table(stack(windows), n_boot=50)
        summary = verdict(table)
    json.dumps(summary.to_json(), allow_nan=False)
    row = table.iloc[1]
    for col in ("pearson_r", "ci_low", "ci_high", "p_naive", "p_jackknife", "q_fdr", "perm_r"):
        assert np.isnan(row[col]), col
    assert not row["passes"] and row["sign"] == "none"
    assert table.iloc[0]["passes"] and table.iloc[2]["passes"]
    assert summary.heads_with_r == 2


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
        sample_of(q, q, causal_keys(10), k=3, seed=0, **kwargs)


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
