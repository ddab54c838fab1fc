"""Per-layer profiles: the point is the head table's own per-layer means, and every band redraws
the clusters the per-head intervals redraw."""

import numpy as np
import pytest

from spectra_interp.stats.clusters import Clusters
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.inference import bootstrap_ci, bootstrap_counts
from spectra_interp.stats.layers import layer_profile
from spectra_interp.stats.moments import R_XY_MOMENTS, Moments, r_xy
from spectra_interp.stats.table import head_table

N_LAYERS, N_HEADS, T = 3, 4, 48


@pytest.fixture(scope="module")
def stats() -> np.ndarray:
    """Per-window sums of 10 windows whose heads range from no relation to a strong one."""
    rng = np.random.default_rng(3)
    rho = np.linspace(-0.9, 0.2, N_LAYERS * N_HEADS).reshape(N_LAYERS, N_HEADS)
    out = []
    for w in range(10):
        z = rng.standard_normal((N_LAYERS, N_HEADS, T))
        e = rho[..., None] * z + np.sqrt(1 - rho[..., None] ** 2) * rng.standard_normal(z.shape)
        q, h = np.exp(0.3 * z), np.clip(2 + 0.5 * e, 0, None)
        out.append(Moments.of_window(q, h, np.arange(1, T + 1), skip_first=1, perm_seed=w).sums)
    return np.stack(out)


def test_points_are_the_head_tables_per_layer_means(stats):
    clusters = Clusters(np.arange(10) // 2, "document")
    criteria = Criteria(r_threshold=0.4)
    table = head_table(stats, clusters=clusters, n_boot=20, criteria=criteria)
    included = np.ones((N_LAYERS, N_HEADS), dtype=bool)
    profile = layer_profile(stats, clusters, included, criteria, n_boot=50)
    by_layer = table.groupby("layer")
    assert np.allclose(profile["mean_r"], by_layer["pearson_r"].mean())
    assert np.allclose(profile["share_passing"], by_layer["passes"].mean())
    assert np.allclose(profile["mean_delta_r2"], by_layer["delta_r2"].mean())
    assert 0 < profile["share_passing"].sum() < N_LAYERS, "some heads pass, not all"
    for m in ("mean_r", "share_passing", "mean_delta_r2"):
        assert (profile[f"{m}_ci_low"] <= profile[m] + 1e-12).all()
        assert (profile[m] <= profile[f"{m}_ci_high"] + 1e-12).all()


def test_the_bands_redraw_the_per_head_intervals_clusters(stats):
    """A one-head layer's band of mean r is that head's own cluster-bootstrap interval."""
    clusters = Clusters.windows(10)
    included = np.zeros((N_LAYERS, N_HEADS), dtype=bool)
    included[:, 0] = True
    profile = layer_profile(stats, clusters, included, Criteria(), n_boot=200, seed=5)
    low, high = bootstrap_ci(clusters.sum(stats)[..., R_XY_MOMENTS], r_xy, n_boot=200, seed=5)
    assert np.allclose(profile["mean_r_ci_low"], low[:, 0])
    assert np.allclose(profile["mean_r_ci_high"], high[:, 0])
    assert bootstrap_counts(10, 200, 5).sum(1).tolist() == [10.0] * 200


def test_excluded_heads_leave_every_mean_and_share(stats):
    clusters = Clusters.windows(10)
    included = np.ones((N_LAYERS, N_HEADS), dtype=bool)
    included[1, :] = False
    included[0, 2] = False
    profile = layer_profile(stats, clusters, included, Criteria(), n_boot=20)
    assert profile["heads"].tolist() == [3, 0, 4]
    assert np.isnan(profile.loc[1, "mean_r"]) and np.isnan(profile.loc[1, "share_passing"])
    full = layer_profile(stats, clusters, np.ones_like(included), Criteria(), n_boot=0)
    r = r_xy(stats.sum(0)[..., R_XY_MOMENTS])
    assert profile.loc[0, "mean_r"] == pytest.approx(r[0, [0, 1, 3]].mean())
    assert profile.loc[2, "mean_r"] == pytest.approx(full.loc[2, "mean_r"])
    assert full["mean_r_ci_low"].isna().all()
