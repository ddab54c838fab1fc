"""Per-layer summaries of a run's heads with cluster-bootstrap intervals: the mean r(‖q‖, H),
the share of heads that pass and the mean delta R^2 of each layer.

Each bootstrap replicate redraws whole clusters (documents, or windows with fewer than eight
documents) with `bootstrap_counts`, the resampling of the per-head intervals, and recomputes
every head from the redrawn sums: r and delta R^2 from the summed moments, and the pass rule
with the jackknife p-values and the BH correction run on the redrawn clusters themselves. Heads
outside `included` (degenerate ones) are left out of every mean and share.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float

from spectra_interp.stats.beyond import delta_r2, within_columns
from spectra_interp.stats.clusters import Clusters
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.inference import bootstrap_counts, fdr_q_values, jackknife_p_value
from spectra_interp.stats.moments import R_XY_MOMENTS, r_xy

# The per-layer statistics, in the order of `LayerStats.values`.
LAYER_METRICS = ("mean_r", "share_passing", "mean_delta_r2")


@dataclass(frozen=True)
class LayerStats:
    """Every head's r, pass flag and delta R^2 from per-cluster sums."""

    r: Float[np.ndarray, "layer head"]
    passes: Bool[np.ndarray, "layer head"]
    delta_r2: Float[np.ndarray, "layer head"]

    @classmethod
    def of(
        cls,
        moments: Float[np.ndarray, "cluster layer head moment"],
        within: Float[np.ndarray, "cluster layer head column"],
        criteria: Criteria,
    ) -> LayerStats:
        """The head table's own definitions (`head_table`) applied to these clusters."""
        r = r_xy(moments.sum(0)[..., R_XY_MOMENTS])
        p, _ = jackknife_p_value(moments)
        q = fdr_q_values(p.ravel()).reshape(p.shape)
        return cls(r, criteria.passes(r, q), delta_r2(within.sum(0)))

    def values(self, included: Bool[np.ndarray, "layer head"]) -> Float[np.ndarray, "metric layer"]:
        """Per layer: mean r, share passing and mean delta R^2 over the included heads (NaN
        for a layer with none)."""
        n = included.sum(1)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # a layer of NaN heads is NaN
            return np.stack(
                [
                    np.nanmean(np.where(included, self.r, np.nan), axis=1),
                    np.where(n > 0, (self.passes & included).sum(1) / n, np.nan),
                    np.nanmean(np.where(included, self.delta_r2, np.nan), axis=1),
                ]
            )


def layer_profile(
    stats: Float[np.ndarray, "window layer head moment"],
    clusters: Clusters,
    included: Bool[np.ndarray, "layer head"],
    criteria: Criteria,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per layer: `heads` included, each of `LAYER_METRICS` on all clusters and its
    percentile interval (`<metric>_ci_low`, `<metric>_ci_high`) over `n_boot` cluster
    resamples drawn with the run's `seed` (NaN with fewer than 2 clusters).

    Raises nothing of its own; `stats` are the trained model's shards stacked in window order
    and `clusters` their clusters (`Clusters.of(meta)`).
    """
    s = np.asarray(stats, dtype=np.float64)
    moments, within = clusters.sum(s), clusters.sum(within_columns(s))
    point = LayerStats.of(moments, within, criteria).values(included)
    n_layers = s.shape[1]
    low = high = np.full_like(point, np.nan)
    if clusters.n >= 2 and n_boot >= 1:
        counts = bootstrap_counts(clusters.n, n_boot, seed).astype(np.int64)
        boots = np.stack(
            [
                LayerStats.of(
                    np.repeat(moments, c, axis=0), np.repeat(within, c, axis=0), criteria
                ).values(included)
                for c in counts
            ]
        )
        tail = (1 - level) / 2
        with warnings.catch_warnings():  # a layer undefined in every replicate stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(boots, [tail, 1 - tail], axis=0)
    out = {"layer": np.arange(n_layers), "heads": included.sum(1)}
    for i, name in enumerate(LAYER_METRICS):
        out[name] = point[i]
        out[f"{name}_ci_low"] = low[i]
        out[f"{name}_ci_high"] = high[i]
    return pd.DataFrame(out)
