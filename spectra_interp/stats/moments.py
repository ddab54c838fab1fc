"""Mergeable per-window sufficient statistics of ‖q‖ against H, and correlations from them.

`Moments.of_window` reduces one window's ``qnorm[layer, head, pos]``, ``entropy[layer, head,
pos]`` and the keys each query sees, ``n_keys[layer, pos]``, to plain sums ``[layer, head,
moment]`` (float64, indexed by `Moment`). Sums add: windows, resumed runs and processes merge
with `merge` (a plain ``+``); a run keeps them per window, stacked ``[window, layer, head,
moment]``, because windows (or the documents they come from) are the units of inference.

Variables per token: x = ‖q‖, lx = log‖q‖, y = H (nats), yn = H / log(n_keys), z = log(n_keys)
(the position confound: H <= log(keys seen); on a causal layer without a window n_keys = pos + 1)
and xp = ‖q‖ permuted within the window (the randomization control).

Numerics: the sums are raw (not shifted), in float64, so merging stays a plain ``+``; correlations
use the centred-sum formula ``n*Sab - Sa*Sb``, whose cancellation costs about eps * (mean / sd)^2
per variable (log‖q‖ included): ~1e-12 in r at ‖q‖ ~ 50 +- 1, ~1e-8 at 1000 +- 1 (both tested
against numpy). A variable whose sd is below ~1e-6 of its root-mean-square cannot be resolved and
is treated as constant, so its correlations are NaN (e.g. ‖q‖ after a QK-norm without a gain,
which is constant up to fp32 rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from jaxtyping import Float, Int

from spectra_interp.errors import SpectraError

STATS_VERSION = 2
Seed = int | Sequence[int]


class Moment(IntEnum):
    """Index of each sum along the last axis of the statistics array."""

    N = 0
    SX = 1
    SY = 2
    SXX = 3
    SYY = 4
    SXY = 5
    SLX = 6
    SLXLX = 7
    SLXY = 8
    SYN = 9
    SYNYN = 10
    SXYN = 11
    SZ = 12
    SZZ = 13
    SXZ = 14
    SYZ = 15
    SXPY = 16
    SLXZ = 17


MOMENTS: tuple[str, ...] = tuple(m.name.lower() for m in Moment)
N_MOMENTS = len(Moment)
# Variance below this fraction of the raw second moment is rounding noise: treat as constant.
REL_VAR_TOL = 1e-12


@dataclass(frozen=True)
class Kept:
    """One window's values at the kept positions (``skip_first`` onwards), validated."""

    qnorm: Float[np.ndarray, "layer head pos"]
    entropy: Float[np.ndarray, "layer head pos"]
    n_keys: Int[np.ndarray, "layer pos"]
    pos: Int[np.ndarray, " pos"]


def layer_keys(n_keys: np.ndarray, n_layers: int, n_pos: int) -> Int[np.ndarray, "layer pos"]:
    """Keys seen as ``[layer, pos]``; a ``[pos]`` array applies to every layer."""
    nk = np.asarray(n_keys)
    if nk.shape == (n_pos,):
        nk = np.broadcast_to(nk, (n_layers, n_pos))
    if nk.shape != (n_layers, n_pos) or not np.issubdtype(nk.dtype, np.integer):
        raise SpectraError(
            f"n_keys must be integers of shape ({n_layers}, {n_pos}) or ({n_pos},), got "
            f"{nk.shape} {nk.dtype}."
        )
    return nk


def kept_positions(
    qnorm: np.ndarray, entropy: np.ndarray, n_keys: np.ndarray, skip_first: int
) -> Kept:
    """Check shapes and values; keep positions from ``skip_first`` on, as float64 / int64."""
    q, h = np.asarray(qnorm), np.asarray(entropy)
    if q.ndim != 3 or q.shape != h.shape:
        raise SpectraError(
            f"qnorm {q.shape} and entropy {h.shape} must have the same [layer, head, pos] shape."
        )
    n_layers, _, n_pos = q.shape
    nk = layer_keys(n_keys, n_layers, n_pos)
    if skip_first < 0:
        raise SpectraError(f"skip_first must be >= 0, got {skip_first}.")
    if skip_first >= n_pos:
        raise SpectraError(
            f"skip_first={skip_first} leaves no positions in a window of {n_pos} tokens."
        )
    nk = nk[:, skip_first:].astype(np.int64)
    if np.any(nk < 2):
        layer, first = np.argwhere(nk < 2)[0]
        raise SpectraError(
            f"Position {skip_first + first} sees {int(nk[layer, first])} key(s), so "
            "H/log(n_keys) is undefined; use skip_first >= 1 for causal attention."
        )
    q = q[..., skip_first:].astype(np.float64)
    h = h[..., skip_first:].astype(np.float64)
    if not (np.all(np.isfinite(q)) and np.all(q > 0)):
        raise SpectraError("qnorm must be finite and positive (log‖q‖ is one of the variables).")
    if not (np.all(np.isfinite(h)) and np.all(h >= -1e-6)):
        raise SpectraError("entropy must be finite and non-negative.")
    return Kept(q, h, nk, np.arange(skip_first, n_pos))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("lhp,lhp->lh", a, b)


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics ``[..., moment]`` (see `Moment`); windows merge by addition."""

    sums: Float[np.ndarray, "... moment"]

    @classmethod
    def of_window(
        cls,
        qnorm: Float[np.ndarray, "layer head pos"],
        entropy: Float[np.ndarray, "layer head pos"],
        n_keys: Int[np.ndarray, "layer pos"],
        *,
        skip_first: int,
        perm_seed: Seed,
    ) -> Moments:
        """The sums of one window. The randomization control permutes ‖q‖ over the kept
        positions with one permutation shared by all heads, drawn from
        ``np.random.default_rng(perm_seed)`` (pass e.g. ``(run_seed, window_id)``); per head
        that is an exact uniform permutation, and sharing it costs one gather."""
        k = kept_positions(qnorm, entropy, n_keys, skip_first)
        q, h = k.qnorm, k.entropy
        n_layer, n_head, n_pos = q.shape
        log_keys = np.log(k.n_keys.astype(np.float64))
        lx = np.log(q)
        yn = h / log_keys[:, None, :]
        z = log_keys
        xp = q[..., np.random.default_rng(perm_seed).permutation(n_pos)]
        out = np.empty((n_layer, n_head, N_MOMENTS), dtype=np.float64)
        out[..., Moment.N] = n_pos
        out[..., Moment.SX] = q.sum(-1)
        out[..., Moment.SY] = h.sum(-1)
        out[..., Moment.SXX] = _dot(q, q)
        out[..., Moment.SYY] = _dot(h, h)
        out[..., Moment.SXY] = _dot(q, h)
        out[..., Moment.SLX] = lx.sum(-1)
        out[..., Moment.SLXLX] = _dot(lx, lx)
        out[..., Moment.SLXY] = _dot(lx, h)
        out[..., Moment.SYN] = yn.sum(-1)
        out[..., Moment.SYNYN] = _dot(yn, yn)
        out[..., Moment.SXYN] = _dot(q, yn)
        out[..., Moment.SZ] = z.sum(-1)[:, None]
        out[..., Moment.SZZ] = np.einsum("lp,lp->l", z, z)[:, None]
        out[..., Moment.SXZ] = np.einsum("lhp,lp->lh", q, z)
        out[..., Moment.SYZ] = np.einsum("lhp,lp->lh", h, z)
        out[..., Moment.SXPY] = _dot(xp, h)
        out[..., Moment.SLXZ] = np.einsum("lhp,lp->lh", lx, z)
        return cls(out)

    def merge(self, other: Moments) -> Moments:
        return Moments(self.sums + other.sums)

    def __getitem__(self, moment: Moment) -> np.ndarray:
        return self.sums[..., moment]


def corr(
    n: np.ndarray, sa: np.ndarray, sb: np.ndarray, saa: np.ndarray, sbb: np.ndarray, sab: np.ndarray
) -> np.ndarray:
    """Pearson r from raw sums (centred-sum formula); NaN where either variable is constant."""
    with np.errstate(divide="ignore", invalid="ignore"):
        va = n * saa - sa * sa
        vb = n * sbb - sb * sb
        cov = n * sab - sa * sb
        ok = (va > REL_VAR_TOL * n * saa) & (vb > REL_VAR_TOL * n * sbb) & (n > 1)
        r = np.where(ok, cov / np.sqrt(np.where(ok, va * vb, 1.0)), np.nan)
    return np.clip(r, -1.0, 1.0)


# The columns of r(‖q‖, H), in the order `r_xy` reads them.
R_XY_MOMENTS = [Moment.N, Moment.SX, Moment.SY, Moment.SXX, Moment.SYY, Moment.SXY]


def r_xy(s: np.ndarray) -> np.ndarray:
    """r(‖q‖, H) from the six `R_XY_MOMENTS` columns (in that order)."""
    return corr(s[..., 0], s[..., 1], s[..., 2], s[..., 3], s[..., 4], s[..., 5])


def correlations(stats: Float[np.ndarray, "... moment"]) -> dict[str, np.ndarray]:
    """Correlations and means per head from summed statistics (any leading shape).

    ``pearson_r`` r(‖q‖, H); ``pearson_r_log`` r(log‖q‖, H); ``pearson_r_norm_entropy``
    r(‖q‖, H/log n_keys); ``partial_r_position`` r(‖q‖, H | log n_keys); ``perm_r`` r of ‖q‖
    permuted within windows vs H (this keeps window means, so it shows the between-window part).
    """
    s = np.asarray(stats, dtype=np.float64)
    if s.shape[-1] != N_MOMENTS:
        raise SpectraError(f"Statistics have {s.shape[-1]} moments, expected {N_MOMENTS}.")
    m = Moment
    n = s[..., m.N]
    rxy = r_xy(s[..., R_XY_MOMENTS])
    r_xz = corr(n, s[..., m.SX], s[..., m.SZ], s[..., m.SXX], s[..., m.SZZ], s[..., m.SXZ])
    r_yz = corr(n, s[..., m.SY], s[..., m.SZ], s[..., m.SYY], s[..., m.SZZ], s[..., m.SYZ])
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.sqrt((1 - r_xz**2) * (1 - r_yz**2))
        partial = np.where(denom > 1e-12, (rxy - r_xz * r_yz) / denom, np.nan)
        mean_q = s[..., m.SX] / n
        mean_h = s[..., m.SY] / n
    return {
        "pearson_r": rxy,
        "pearson_r_log": corr(
            n, s[..., m.SLX], s[..., m.SY], s[..., m.SLXLX], s[..., m.SYY], s[..., m.SLXY]
        ),
        "pearson_r_norm_entropy": corr(
            n, s[..., m.SX], s[..., m.SYN], s[..., m.SXX], s[..., m.SYNYN], s[..., m.SXYN]
        ),
        "partial_r_position": np.clip(partial, -1.0, 1.0),
        "perm_r": corr(n, s[..., m.SX], s[..., m.SY], s[..., m.SXX], s[..., m.SYY], s[..., m.SXPY]),
        "n": n,
        "mean_qnorm": mean_q,
        "mean_entropy": mean_h,
    }


def within_window_r(
    stats: Float[np.ndarray, "window ... moment"],
) -> tuple[np.ndarray, np.ndarray]:
    """r(‖q‖, H) and r(permuted ‖q‖, H) after removing each window's means (pooled within-window
    covariance over pooled within-window variances).

    The pooled ``pearson_r`` mixes a within-window part (tokens of one document) and a
    between-window part (documents whose mean ‖q‖ and mean H differ). Permuting ‖q‖ inside a
    window keeps window means, so the pooled ``perm_r`` keeps the between-window part; the
    within-window ``perm_r_within`` has expectation exactly 0 and checks the pairing itself.
    """
    s = np.asarray(stats, dtype=np.float64)
    m = Moment
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.where(s[..., m.N] > 0, s[..., m.N], np.inf)
        sx, sy = s[..., m.SX], s[..., m.SY]
        vx = (s[..., m.SXX] - sx * sx / n).sum(0)
        vy = (s[..., m.SYY] - sy * sy / n).sum(0)
        cxy = (s[..., m.SXY] - sx * sy / n).sum(0)
        cpy = (s[..., m.SXPY] - sx * sy / n).sum(0)
        ok = (vx > REL_VAR_TOL * s[..., m.SXX].sum(0)) & (vy > REL_VAR_TOL * s[..., m.SYY].sum(0))
        scale = np.sqrt(np.where(ok, vx * vy, 1.0))
        r = np.where(ok, cxy / scale, np.nan)
        rp = np.where(ok, cpy / scale, np.nan)
    return np.clip(r, -1.0, 1.0), np.clip(rp, -1.0, 1.0)
