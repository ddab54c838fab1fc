"""One row per (layer, head) from per-window statistics: correlations, inference, controls."""

from __future__ import annotations

import numpy as np
import pandas as pd
from jaxtyping import Float

from spectra_interp.errors import SpectraError
from spectra_interp.stats.beyond import SampleArrays, delta_r2, sample_columns, within_columns
from spectra_interp.stats.clusters import Clusters
from spectra_interp.stats.columns import HEAD_COLUMNS
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.degenerate import COLUMN as DEGENERATE
from spectra_interp.stats.inference import (
    CI_LEVEL,
    bootstrap_ci,
    fdr_q_values,
    jackknife_p_value,
    naive_p_value,
    r_bootstrap_ci,
)
from spectra_interp.stats.moments import (
    N_MOMENTS,
    R_XY_MOMENTS,
    Moment,
    correlations,
    r_xy,
    within_window_r,
)
from spectra_interp.stats.sample import spearman_from_sample


def _sign(r: np.ndarray) -> np.ndarray:
    return np.where(r < 0, "negative", np.where(r > 0, "positive", "none"))


def head_table(
    trained_stats: Float[np.ndarray, "window layer head moment"],
    trained_sample: pd.DataFrame | None = None,
    random_init_stats: Float[np.ndarray, "window layer head moment"] | None = None,
    *,
    clusters: Clusters | None = None,
    sample_arrays: SampleArrays | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    criteria: Criteria | None = None,
    ci_level: float = CI_LEVEL,
    degenerate: np.ndarray | None = None,
    random_init_degenerate: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per (layer, head) from per-window statistics stacked as ``[window, layer, head,
    moment]`` (a list of per-window arrays works too); the columns are `HEAD_COLUMNS`.

    Inference (jackknife p, bootstrap CIs) resamples `clusters` (default: each window its own);
    ``spearman_rho`` uses the token sample frame and the span and temperature columns the
    stacked sample (NaN without them); ``random_init_r`` is NaN without the random-init
    statistics; ``passes`` applies `criteria` (default: the seed's). `degenerate` (``[layer,
    head]`` reasons from `stats.degenerate.degenerate_reasons`, "" for a measured head) leaves
    those heads out: their statistics are NaN, they never pass and they are not in the FDR
    family; `random_init_degenerate` does the same to ``random_init_r``.
    """
    criteria = criteria or Criteria()
    s = np.asarray(trained_stats, dtype=np.float64)
    if s.ndim != 4 or s.shape[-1] != N_MOMENTS:
        raise SpectraError(
            f"trained_stats has shape {s.shape}; expected [window, layer, head, {N_MOMENTS}]."
        )
    if s.shape[0] == 0:
        raise SpectraError("No windows: trained_stats is empty.")
    n_layers, n_heads = s.shape[1:3]
    clusters = clusters or Clusters.windows(s.shape[0])
    if clusters.ids.shape != (s.shape[0],):
        raise SpectraError(f"{clusters.ids.shape[0]} cluster ids for {s.shape[0]} windows.")
    per_cluster = clusters.sum(s)
    pooled = correlations(s.sum(0))
    ci_low, ci_high = r_bootstrap_ci(per_cluster, n_boot=n_boot, seed=seed, level=ci_level)
    p_jackknife, se = jackknife_p_value(per_cluster)
    reasons = np.full((n_layers, n_heads), "", dtype=object)
    if degenerate is not None:
        reasons = np.asarray(degenerate, dtype=object).reshape(n_layers, n_heads)
    left_out = reasons != ""
    p_jackknife = np.where(left_out, np.nan, p_jackknife)
    q = fdr_q_values(p_jackknife.ravel()).reshape(p_jackknife.shape)
    within = clusters.sum(within_columns(s))
    d_low, d_high = bootstrap_ci(within, delta_r2, n_boot=n_boot, seed=seed, level=ci_level)
    nan = np.full((n_layers, n_heads), np.nan)
    span = sample_columns(sample_arrays) if sample_arrays is not None else {}
    spearman = (
        spearman_from_sample(trained_sample, n_layers, n_heads)
        if trained_sample is not None
        else np.full((n_layers, n_heads), np.nan)
    )
    random_r = np.full((n_layers, n_heads), np.nan)
    if random_init_stats is not None:
        rs = np.asarray(random_init_stats, dtype=np.float64)
        if rs.ndim == 3:
            rs = rs[None]
        if rs.shape[1:] != s.shape[1:]:
            raise SpectraError(
                f"random_init_stats {rs.shape} do not match trained_stats {s.shape} per window."
            )
        random_r = r_xy(rs.sum(0)[..., R_XY_MOMENTS])
        if random_init_degenerate is not None:
            control_out = np.asarray(random_init_degenerate, dtype=object) != ""
            random_r = np.where(control_out.reshape(random_r.shape), np.nan, random_r)
    r = np.where(left_out, np.nan, pooled["pearson_r"])
    r_within, perm_within = within_window_r(s)
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    columns = {
        "layer": layer,
        "head": head,
        "n_tokens": pooled["n"].astype(np.int64),
        "n_windows": (s[..., Moment.N] > 0).sum(0).astype(np.int64),
        "cluster_unit": np.full((n_layers, n_heads), clusters.unit),
        "n_clusters": np.full((n_layers, n_heads), clusters.n, dtype=np.int64),
        DEGENERATE: reasons,
        "pearson_r": r,
        "pearson_r_log": pooled["pearson_r_log"],
        "spearman_rho": spearman,
        "partial_r_position": pooled["partial_r_position"],
        "pearson_r_norm_entropy": pooled["pearson_r_norm_entropy"],
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_naive": naive_p_value(r, pooled["n"]),
        "p_jackknife": p_jackknife,
        "se_fisher_z": se,
        "q_fdr": q,
        "perm_r": pooled["perm_r"],
        "within_window_r": r_within,
        "perm_r_within": perm_within,
        "random_init_r": random_r,
        "passes": criteria.passes(r, q),
        "sign": _sign(r),
        "mean_qnorm": pooled["mean_qnorm"],
        "mean_entropy": pooled["mean_entropy"],
        "r_max_attn": span.get("r_max_attn", nan),
        "r_log_keff": span.get("r_log_keff", nan),
        "auroc_low_entropy": span.get("auroc_low_entropy", nan),
        "delta_r2": delta_r2(within.sum(0)),
        "delta_r2_ci_low": d_low,
        "delta_r2_ci_high": d_high,
        "slope_obs": span.get("slope_obs", nan),
        "gain_entropy": span.get("gain_entropy", nan),
        "temperature_share": span.get("temperature_share", nan),
    }
    if list(columns) != list(HEAD_COLUMNS):
        raise AssertionError("head_table's columns drifted from stats.columns.HEAD_COLUMNS")
    for name in UNDEFINED_WHEN_DEGENERATE:
        columns[name] = np.where(left_out, np.nan, columns[name])
    return pd.DataFrame({k: np.asarray(v).ravel() for k, v in columns.items()})


# The statistics of r(‖q‖, H) that a degenerate head does not have (its counts, means and the
# control's r stay; `passes` is False and `sign` "none" because r is NaN).
UNDEFINED_WHEN_DEGENERATE = (
    "pearson_r_log", "spearman_rho", "partial_r_position", "pearson_r_norm_entropy", "ci_low",
    "ci_high", "p_naive", "p_jackknife", "se_fisher_z", "q_fdr", "perm_r", "within_window_r",
    "perm_r_within", "r_max_attn", "r_log_keff", "auroc_low_entropy", "delta_r2",
    "delta_r2_ci_low", "delta_r2_ci_high", "slope_obs", "gain_entropy", "temperature_share",
)  # fmt: skip
