"""The head table: columns, merged runs, known effects, controls."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from synthetic import causal_keys, sample_of, simulate, stack

from spectra_interp.errors import SpectraError
from spectra_interp.stats.moments import correlations
from spectra_interp.stats.sample import sample_frame
from spectra_interp.stats.table import head_table
from spectra_interp.stats.verdict import verdict


def test_head_table_same_for_merged_runs():
    windows = simulate(10, 50, 2, 2, seed=2, beta=-0.8, sd_a=1.0)
    s = stack(windows)
    run1, run2 = s[:4], s[4:]  # e.g. an interrupted run resumed later
    t_whole = head_table(s, n_boot=200, seed=3)
    t_merged = head_table(np.concatenate([run1, run2]), n_boot=200, seed=3)
    pd.testing.assert_frame_equal(t_whole, t_merged)


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
                sample_of(q, h, causal_keys(n_pos), skip_first=1, k=n_pos, seed=i), window_id=i
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


def test_head_table_columns_and_random_init():
    trained = stack(simulate(6, 80, 2, 3, seed=16, beta=-1.0))
    random_init = stack(simulate(5, 80, 2, 3, seed=17))
    table = head_table(trained, random_init_stats=random_init, n_boot=100)
    required = (
        "layer head n_tokens n_windows pearson_r pearson_r_log spearman_rho partial_r_position "
        "pearson_r_norm_entropy ci_low ci_high p_naive p_jackknife q_fdr perm_r random_init_r "
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
                sample_of(q, h, causal_keys(80), skip_first=1, k=5, seed=0), window_id=0, model=m
            )
            for (q, h), m in zip(
                simulate(2, 80, 2, 3, seed=18), ["trained", "random_init"], strict=True
            )
        ]
    )
    with pytest.raises(SpectraError, match="mixes models"):
        head_table(trained, mixed, n_boot=10)


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
    assert verdict(table).criteria.randomization_control.met


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
    assert not pooled.criteria.randomization_control.met
    assert exact.criteria.randomization_control.met
    assert exact.controls.within_window.mean_abs_within_window_r > 0.4
    assert "window means removed" in exact.text()


def test_head_table_at_llama_scale():
    """64 windows x 1024 heads x 1000 bootstrap replicates: every head gets its interval."""
    s = stack(simulate(64, 40, 32, 32, seed=19, beta=-0.5, sd_a=1.0))
    table = head_table(s, n_boot=1000)
    assert len(table) == 1024 and table["ci_low"].notna().all()
    assert (table["ci_low"] <= table["pearson_r"]).all()
    assert (table["pearson_r"] <= table["ci_high"]).all()
