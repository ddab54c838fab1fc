"""Beyond r: what ‖q‖ says about attention that position and the softmax do not already say.

A negative r(‖q‖, H) is partly guaranteed: for a fixed query direction the logits scale with
‖q‖ and dH/dlog‖q‖ = -Var_p(s) <= 0. These statistics separate that from the rest:

- `delta_r2`: the share of the variance of H that log‖q‖ explains beyond log(keys seen) and the
  window means (within-window regression), from mergeable per-window sums, with a cluster CI.
  It carries the sign of the log‖q‖ coefficient (negative: larger ‖q‖, lower H, as H1 says),
  because an unsigned R^2 gain is never below 0 and its interval would exclude 0 even where
  ‖q‖ adds nothing; signed, the interval excludes 0 only when the direction holds across
  clusters;
- `slope_obs`: the within-window slope dH/dlog‖q‖ given log(keys seen), on the token sample;
  `gain_entropy`: the mean local gain dH/dlog(alpha) at alpha = 1 of the same queries (what
  rescaling the query alone does); `temperature_share` = slope_obs / gain_entropy;
- span statistics in keys: r(‖q‖, max attention), r(log‖q‖, log k_eff), and how well a larger
  ‖q‖ ranks the head's sharper-than-median queries (AUROC).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pandas as pd
from jaxtyping import Float, Int
from scipy import stats as sps

from spectra_interp.stats.moments import Moment, corr


class Within(IntEnum):
    """Per-window additive columns of the delta R^2 statistic."""

    N = 0
    SY = 1
    SYY = 2
    CLXLX = 3
    CLXZ = 4
    CZZ = 5
    CLXY = 6
    CZY = 7


def within_columns(stats: Float[np.ndarray, "window ... moment"]) -> np.ndarray:
    """Each window's centred cross-products of (log‖q‖, log keys seen, H), plus n, Σy, Σy² for
    the total variance: sums over windows (or clusters of windows) stay valid."""
    s = np.asarray(stats, dtype=np.float64)
    m = Moment
    n = s[..., m.N]
    safe = np.where(n > 0, n, np.inf)

    def centred(ab: Moment, a: Moment, b: Moment) -> np.ndarray:
        return s[..., ab] - s[..., a] * s[..., b] / safe

    out = np.empty((*s.shape[:-1], len(Within)))
    out[..., Within.N] = n
    out[..., Within.SY] = s[..., m.SY]
    out[..., Within.SYY] = s[..., m.SYY]
    out[..., Within.CLXLX] = centred(m.SLXLX, m.SLX, m.SLX)
    out[..., Within.CLXZ] = centred(m.SLXZ, m.SLX, m.SZ)
    out[..., Within.CZZ] = centred(m.SZZ, m.SZ, m.SZ)
    out[..., Within.CLXY] = centred(m.SLXY, m.SLX, m.SY)
    out[..., Within.CZY] = centred(m.SYZ, m.SZ, m.SY)
    return out


def delta_r2(columns: Float[np.ndarray, "... column"]) -> np.ndarray:
    """R^2 of H on (log‖q‖, log keys seen) minus R^2 on log keys seen alone, both with window
    means (fixed effects), as a share of the total variance of H, signed by the log‖q‖
    coefficient. NaN where undefined."""
    c = np.asarray(columns, dtype=np.float64)
    w = Within
    with np.errstate(divide="ignore", invalid="ignore"):
        total = c[..., w.SYY] - c[..., w.SY] ** 2 / c[..., w.N]
        det = c[..., w.CLXLX] * c[..., w.CZZ] - c[..., w.CLXZ] ** 2
        both = (
            c[..., w.CLXY] ** 2 * c[..., w.CZZ]
            - 2 * c[..., w.CLXY] * c[..., w.CZY] * c[..., w.CLXZ]
            + c[..., w.CZY] ** 2 * c[..., w.CLXLX]
        ) / det
        position = c[..., w.CZY] ** 2 / c[..., w.CZZ]
        slope = c[..., w.CLXY] * c[..., w.CZZ] - c[..., w.CZY] * c[..., w.CLXZ]
        out = np.sign(slope) * (both - position) / total
    ok = (det > 1e-12 * np.abs(c[..., w.CLXLX] * c[..., w.CZZ])) & (total > 0)
    return np.where(ok, out, np.nan)


@dataclass(frozen=True)
class SampleArrays:
    """The token sample of every window, stacked: values ``[window, layer, head, k]``, keys
    seen ``[window, layer, k]``, mean H per query scale ``[window, layer, head, scale]``."""

    qnorm: Float[np.ndarray, "window layer head k"]
    entropy: Float[np.ndarray, "window layer head k"]
    n_keys: Int[np.ndarray, "window layer k"]
    max_attn: Float[np.ndarray, "window layer head k"]
    k_eff: Int[np.ndarray, "window layer head k"]
    gain: Float[np.ndarray, "window layer head k"]
    scaled_mean: Float[np.ndarray, "window layer head scale"]


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r over the last two axes (window, k) flattened, per head."""
    a = a.reshape(*a.shape[:2], -1).astype(np.float64)
    b = b.reshape(*b.shape[:2], -1).astype(np.float64)
    n = np.full(a.shape[:2], float(a.shape[-1]))
    return corr(n, a.sum(-1), b.sum(-1), (a * a).sum(-1), (b * b).sum(-1), (a * b).sum(-1))


def _heads_last(x: np.ndarray) -> np.ndarray:
    """[window, layer, head, k] -> [layer, head, window, k]."""
    return np.moveaxis(np.asarray(x), 0, 2)


def auroc_low_entropy(
    qnorm: Float[np.ndarray, "layer head n"], entropy: Float[np.ndarray, "layer head n"]
) -> np.ndarray:
    """P(‖q‖ of a query with H below the head's median > ‖q‖ of one without), ties counting half:
    0.5 is no skill, below 0.5 the opposite direction. NaN when one class is empty."""
    low = entropy < np.median(entropy, axis=-1, keepdims=True)
    ranks = sps.rankdata(qnorm, axis=-1)
    n_low = low.sum(-1)
    n_rest = low.shape[-1] - n_low
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (ranks * low).sum(-1) - n_low * (n_low + 1) / 2
        auc = u / (n_low * n_rest)
    return np.where((n_low > 0) & (n_rest > 0), auc, np.nan)


def within_slope(
    y: Float[np.ndarray, "layer head window k"],
    x: Float[np.ndarray, "layer head window k"],
    z: Float[np.ndarray, "layer head window k"],
) -> np.ndarray:
    """The OLS coefficient of x in y ~ x + z + window means, per head."""

    def centred(a: np.ndarray) -> np.ndarray:
        return a - a.mean(-1, keepdims=True)

    y, x, z = centred(y), centred(x), centred(z)

    def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum((-1, -2))

    xx, zz, xz, xy, zy = dot(x, x), dot(z, z), dot(x, z), dot(x, y), dot(z, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = xx * zz - xz * xz
        slope = (xy * zz - zy * xz) / det
    return np.where(det > 1e-12 * np.abs(xx * zz), slope, np.nan)


def sample_columns(sample: SampleArrays) -> dict[str, np.ndarray]:
    """The per-head statistics of the token sample (arrays ``[layer, head]``)."""
    q, h = _heads_last(sample.qnorm), _heads_last(sample.entropy)
    keys = np.moveaxis(np.asarray(sample.n_keys), 0, 1)[:, None].astype(np.float64)
    log_keys = np.broadcast_to(np.log(keys), q.shape)
    lx = np.log(q.astype(np.float64))
    slope = within_slope(h.astype(np.float64), lx, log_keys)
    gain = _heads_last(sample.gain).astype(np.float64).mean((-1, -2))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(np.abs(gain) > 1e-12, slope / gain, np.nan)
    flat = q.shape[:2] + (-1,)
    return {
        "r_max_attn": _pearson(q, _heads_last(sample.max_attn)),
        "r_log_keff": _pearson(lx, np.log(_heads_last(sample.k_eff).astype(np.float64))),
        "auroc_low_entropy": auroc_low_entropy(q.reshape(flat), h.reshape(flat)),
        "slope_obs": slope,
        "gain_entropy": gain,
        "temperature_share": share,
    }


def alpha_response(sample: SampleArrays, scales: tuple[float, ...]) -> pd.DataFrame:
    """Mean H of the sampled queries with the query scaled by each alpha: one row per head and
    scale (the columns of alpha_response.csv)."""
    means = np.asarray(sample.scaled_mean, dtype=np.float64).mean(0)  # [layer, head, scale]
    n_layers, n_heads, n_scales = means.shape
    layer, head, scale = np.meshgrid(
        np.arange(n_layers), np.arange(n_heads), np.asarray(scales), indexing="ij"
    )
    return pd.DataFrame(
        {
            "layer": layer.ravel(),
            "head": head.ravel(),
            "scale": scale.ravel(),
            "mean_entropy": means.ravel(),
        }
    )
