"""The cells of the fitted arms: which cell each query falls in (pure numpy).

Cells nest: `uniform` has one, `head` one per (layer, head), `head_position` splits each head by
`position_bins` equal-width bins of log(keys seen), and the feature arms split each of those by
`feature_bins` quantile bins of a per-query feature's *residual*, the feature minus its mean in
the query's (layer, head, position bin) on the calibration queries: the part of the feature the
head and the position do not already say. The quantile edges are per (layer, head), from the
calibration queries. With one feature bin a feature arm's cells are exactly head_position's.

Cell ids are laid out coarse to fine, ((layer·H + head)·P + position bin)·Q + feature bin, so a
cell's parent (the next coarser arm's cell) is its id divided by the finer level's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int

from spectra_interp.budget.arms import FEATURE, HEAD, POSITION, SHUFFLE_STREAM, Arm


def position_bins(
    log_n: Float[np.ndarray, "layer pos"], n_bins: int
) -> Int[np.ndarray, "layer pos"]:
    """Equal-width bins of log(keys seen) per layer, over the positions given."""
    log_n = np.asarray(log_n, dtype=np.float64)
    lo, hi = log_n.min(axis=1, keepdims=True), log_n.max(axis=1, keepdims=True)
    width = np.where(hi > lo, (hi - lo) / n_bins, 1.0)
    return np.clip(((log_n - lo) / width).astype(np.int64), 0, n_bins - 1)


@dataclass(frozen=True)
class FeatureEdges:
    """A feature's mean per (layer, head, position bin) and its residual's quantile edges per
    (layer, head), both from the calibration queries."""

    mean: Float[np.ndarray, "layer head pbin"]
    edges: Float[np.ndarray, "layer head edge"]  # feature_bins - 1 inner edges

    @property
    def n_bins(self) -> int:
        return self.edges.shape[-1] + 1

    def residual(
        self, feature: Float[np.ndarray, "*w layer head pos"], pbin: Int[np.ndarray, "layer pos"]
    ) -> Float[np.ndarray, "*w layer head pos"]:
        """The feature minus its calibration mean in each query's head-and-position cell."""
        layer = np.arange(pbin.shape[0])[:, None, None]
        head = np.arange(self.mean.shape[1])[None, :, None]
        return np.asarray(feature, dtype=np.float64) - self.mean[layer, head, pbin[:, None, :]]

    def bins(
        self, residual: Float[np.ndarray, "*w layer head pos"]
    ) -> Int[np.ndarray, "*w layer head pos"]:
        """Each residual's quantile bin (0 .. n_bins - 1)."""
        if self.n_bins == 1:
            return np.zeros(np.shape(residual), dtype=np.int64)
        above = residual[..., None] > self.edges[:, :, None, :]
        return above.sum(-1).astype(np.int64)


def fit_edges(
    feature: Float[np.ndarray, "w layer head pos"],
    pbin: Int[np.ndarray, "layer pos"],
    n_pbins: int,
    n_bins: int,
) -> FeatureEdges:
    """The residual's mean and quantile edges from the calibration queries."""
    feature = np.asarray(feature, dtype=np.float64)
    n_layers, n_heads = feature.shape[1:3]
    mean = np.zeros((n_layers, n_heads, n_pbins))
    for b in range(n_pbins):
        cols = pbin == b  # [layer, pos]
        for layer in range(n_layers):
            if cols[layer].any():
                mean[layer, :, b] = feature[:, layer][..., cols[layer]].mean(axis=(0, 2))
    edges_only = FeatureEdges(mean, np.zeros((n_layers, n_heads, 0)))
    residual = edges_only.residual(feature, pbin)
    flat = np.moveaxis(residual, 0, 2).reshape(n_layers, n_heads, -1)
    qs = np.arange(1, n_bins) / n_bins
    edges = np.moveaxis(np.quantile(flat, qs, axis=-1), 0, -1) if n_bins > 1 else flat[..., :0]
    return FeatureEdges(mean, np.asarray(edges, dtype=np.float64))


def shuffle_within_cells(
    residual: Float[np.ndarray, "layer head pos"],
    pbin: Int[np.ndarray, "layer pos"],
    seed: int,
    window_id: int,
) -> Float[np.ndarray, "layer head pos"]:
    """One window's residuals permuted among the queries of the same layer, head and position
    bin (each head its own permutation): what a single query's value says is gone, the cell's
    distribution is kept."""
    rng = np.random.default_rng((seed, SHUFFLE_STREAM, window_id))
    out = np.array(residual, dtype=np.float64, copy=True)
    for layer in range(out.shape[0]):
        for b in np.unique(pbin[layer]):
            cols = np.flatnonzero(pbin[layer] == b)
            out[layer][:, cols] = rng.permuted(out[layer][:, cols], axis=1)
    return out


@dataclass(frozen=True)
class Grid:
    """The sizes of the cell levels: layers, heads, position bins, feature bins."""

    n_layers: int
    n_heads: int
    n_pbins: int
    n_fbins: int

    def sizes(self, arm: Arm) -> tuple[int, ...]:
        size = {HEAD: self.n_layers * self.n_heads, POSITION: self.n_pbins, FEATURE: self.n_fbins}
        return tuple(size[level] for level in arm.cells)

    def n_cells(self, arm: Arm) -> int:
        return int(np.prod(self.sizes(arm), dtype=np.int64))

    def ids(
        self,
        arm: Arm,
        pbin: Int[np.ndarray, "layer pos"],
        fbin: Int[np.ndarray, "*w layer head pos"] | None,
        shape: tuple[int, ...],
    ) -> Int[np.ndarray, "*w layer head pos"]:
        """Each query's cell under `arm` (`shape` = [*w, layer, head, pos])."""
        ids = np.zeros(shape, dtype=np.int64)
        if HEAD in arm.cells:
            head = np.arange(self.n_layers)[:, None, None] * self.n_heads
            ids = ids + head + np.arange(self.n_heads)[None, :, None]
        if POSITION in arm.cells:
            ids = ids * self.n_pbins + pbin[:, None, :]
        if FEATURE in arm.cells:
            assert fbin is not None
            ids = ids * self.n_fbins + fbin
        return ids

    def parent(self, arm: Arm) -> int:
        """How many of this arm's cells make one cell of the next coarser arm (the last level's
        size; 0 for the one-cell arm, which has no parent)."""
        sizes = self.sizes(arm)
        return sizes[-1] if sizes else 0
