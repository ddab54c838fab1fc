"""Synthetic per-window data with known answers, reduced by the real statistics code."""

from __future__ import annotations

import numpy as np

from spectra_interp.stats.moments import Moments
from spectra_interp.stats.sample import sample_positions, token_sample


def window_stats(qnorm, entropy, n_keys, *, skip_first, perm_seed) -> np.ndarray:
    """One window's moment sums as an array (the shard's `stats`)."""
    return Moments.of_window(
        qnorm, entropy, n_keys, skip_first=skip_first, perm_seed=perm_seed
    ).sums


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


def sample_of(qnorm, entropy, n_keys, *, skip_first, k, seed) -> dict[str, np.ndarray]:
    """The token sample of one window at seeded positions (as the sweep draws them)."""
    positions = sample_positions(np.shape(qnorm)[-1], skip_first, k, seed)
    return token_sample(qnorm, entropy, n_keys, positions)
