"""Per-head statistics for ‖q‖ vs attention entropy: mergeable sums, inference, controls, verdict.

Pure numpy/scipy/pandas; knows nothing of models. The flow:

1. ``window_stats`` reduces one window's ``qnorm[layer, head, pos]``, ``entropy[layer, head, pos]``
   to plain sums ``[layer, head, moment]`` (float64, indexed by ``Moment``). Sums add: windows,
   resumed runs and processes merge with ``+``; keep them per window (stacked into
   ``[window, layer, head, moment]``) because windows are the units of inference.
2. ``token_sample`` keeps k positions per window for Spearman and the plots.
3. ``head_table`` turns the stacked sums into one row per head: correlations, a cluster (window)
   bootstrap CI, a cluster-level (delete-one-window jackknife) p-value, the naive token-level
   p-value, Benjamini-Hochberg q-values, and the controls.
4. ``verdict`` / ``verdict_text`` summarise the table against the seed's success criteria.

Variables per token: x = ‖q‖, lx = log‖q‖, y = H (nats), yn = H / log(n_keys), z = log(pos + 1),
and xp = ‖q‖ permuted within the window (the randomization control).

Numerics: the sums are raw (not shifted), in float64, so merging stays a plain ``+``; correlations
use the centred-sum formula ``n*Sab - Sa*Sb``, whose cancellation costs about eps * (mean / sd)^2
per variable (log‖q‖ included): ~1e-12 in r at ‖q‖ ~ 50 +- 1, ~1e-8 at 1000 +- 1 (both tested
against numpy). A variable whose sd is below ~1e-6 of its root-mean-square cannot be resolved and
is treated as constant, so its correlations are NaN (e.g. ‖q‖ after a QK-norm without a gain,
which is constant up to fp32 rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import IntEnum

import numpy as np
import pandas as pd
from jaxtyping import Float, Int
from scipy import stats as sps

from spectra_interp.errors import SpectraError

STATS_VERSION = 1


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


MOMENTS: tuple[str, ...] = tuple(m.name.lower() for m in Moment)
N_MOMENTS = len(Moment)

# Variance below this fraction of the raw second moment is rounding noise: treat as constant.
_REL_VAR_TOL = 1e-12
_SEED = int | Sequence[int]


def _validated(
    qnorm: np.ndarray, entropy: np.ndarray, n_keys: np.ndarray, skip_first: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes and values; return float64 qnorm, entropy and int64 n_keys at the kept
    positions (``skip_first`` onwards), and those positions."""
    q, h, nk = np.asarray(qnorm), np.asarray(entropy), np.asarray(n_keys)
    if q.ndim != 3 or q.shape != h.shape:
        raise SpectraError(
            f"qnorm {q.shape} and entropy {h.shape} must have the same [layer, head, pos] shape."
        )
    n_pos = q.shape[2]
    if nk.shape != (n_pos,) or not np.issubdtype(nk.dtype, np.integer):
        raise SpectraError(
            f"n_keys must be integers of shape ({n_pos},), got {nk.shape} {nk.dtype}."
        )
    if skip_first < 0:
        raise SpectraError(f"skip_first must be >= 0, got {skip_first}.")
    if skip_first >= n_pos:
        raise SpectraError(
            f"skip_first={skip_first} leaves no positions in a window of {n_pos} tokens."
        )
    nk = nk[skip_first:].astype(np.int64)
    if np.any(nk < 2):
        first = skip_first + int(np.argmax(nk < 2))
        raise SpectraError(
            f"Position {first} sees {int(nk[first - skip_first])} key(s), so H/log(n_keys) is "
            "undefined; use skip_first >= 1 for causal attention."
        )
    q = q[..., skip_first:].astype(np.float64)
    h = h[..., skip_first:].astype(np.float64)
    if not (np.all(np.isfinite(q)) and np.all(q > 0)):
        raise SpectraError("qnorm must be finite and positive (log‖q‖ is one of the variables).")
    if not (np.all(np.isfinite(h)) and np.all(h >= -1e-6)):
        raise SpectraError("entropy must be finite and non-negative.")
    return q, h, nk, np.arange(skip_first, n_pos)


def window_stats(
    qnorm: Float[np.ndarray, "layer head pos"],
    entropy: Float[np.ndarray, "layer head pos"],
    n_keys: Int[np.ndarray, " pos"],
    *,
    skip_first: int,
    perm_seed: _SEED,
) -> Float[np.ndarray, "layer head moment"]:
    """Sufficient statistics of one window, float64 ``[layer, head, N_MOMENTS]`` (see ``Moment``).

    Positions ``< skip_first`` are left out; every kept position must see >= 2 keys so that the
    normalised entropy H/log(n_keys) is defined. The randomization control permutes ‖q‖ over the
    kept positions of this window with one permutation shared by all heads, drawn from
    ``np.random.default_rng(perm_seed)`` (pass e.g. ``(run_seed, window_id)`` so windows get
    independent, reproducible permutations); per head that is an exact uniform permutation, and
    sharing it costs one contiguous gather instead of a shuffle per head. Results for two windows
    merge with ``+``.
    """
    q, h, nk, kept = _validated(qnorm, entropy, n_keys, skip_first)
    n_layer, n_head, n_pos = q.shape
    lx = np.log(q)
    yn = h / np.log(nk.astype(np.float64))
    z = np.log(kept.astype(np.float64) + 1.0)
    xp = q[..., np.random.default_rng(perm_seed).permutation(n_pos)]

    def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("lhp,lhp->lh", a, b)

    out = np.empty((n_layer, n_head, N_MOMENTS), dtype=np.float64)
    out[..., Moment.N] = n_pos
    out[..., Moment.SX] = q.sum(-1)
    out[..., Moment.SY] = h.sum(-1)
    out[..., Moment.SXX] = dot(q, q)
    out[..., Moment.SYY] = dot(h, h)
    out[..., Moment.SXY] = dot(q, h)
    out[..., Moment.SLX] = lx.sum(-1)
    out[..., Moment.SLXLX] = dot(lx, lx)
    out[..., Moment.SLXY] = dot(lx, h)
    out[..., Moment.SYN] = yn.sum(-1)
    out[..., Moment.SYNYN] = dot(yn, yn)
    out[..., Moment.SXYN] = dot(q, yn)
    out[..., Moment.SZ] = z.sum()
    out[..., Moment.SZZ] = z @ z
    out[..., Moment.SXZ] = q @ z
    out[..., Moment.SYZ] = h @ z
    out[..., Moment.SXPY] = dot(xp, h)
    return out


def token_sample(
    qnorm: Float[np.ndarray, "layer head pos"],
    entropy: Float[np.ndarray, "layer head pos"],
    n_keys: Int[np.ndarray, " pos"],
    *,
    skip_first: int,
    k: int,
    seed: _SEED,
) -> dict[str, np.ndarray]:
    """The same k kept positions for every head of one window, drawn without replacement.

    Returns ``pos`` and ``n_keys`` (int64 ``[k]``, sorted by position) and ``qnorm``, ``entropy``
    (float32 ``[layer, head, k]``). All kept positions when fewer than k remain. Reproducible from
    ``seed`` (pass e.g. ``(run_seed, window_id)``).
    """
    if k < 1:
        raise SpectraError(f"The token sample needs k >= 1 positions per window, got {k}.")
    q, h, nk, kept = _validated(qnorm, entropy, n_keys, skip_first)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(kept.size, size=min(k, kept.size), replace=False))
    return {
        "pos": kept[idx].astype(np.int64),
        "n_keys": nk[idx],
        "qnorm": q[..., idx].astype(np.float32),
        "entropy": h[..., idx].astype(np.float32),
    }


def sample_frame(
    sample: dict[str, np.ndarray], *, window_id: int, model: str = "trained"
) -> pd.DataFrame:
    """One window's token sample as long rows: ``model, window_id, layer, head, pos, n_keys,
    qnorm, entropy`` (the columns of ``token_sample.parquet``)."""
    n_layer, n_head, k = sample["qnorm"].shape
    layer, head, i = np.meshgrid(np.arange(n_layer), np.arange(n_head), np.arange(k), indexing="ij")
    return pd.DataFrame(
        {
            "model": model,
            "window_id": np.int64(window_id),
            "layer": layer.ravel().astype(np.int64),
            "head": head.ravel().astype(np.int64),
            "pos": sample["pos"][i.ravel()],
            "n_keys": sample["n_keys"][i.ravel()],
            "qnorm": sample["qnorm"].ravel(),
            "entropy": sample["entropy"].ravel(),
        }
    )


def _corr(
    n: np.ndarray, sa: np.ndarray, sb: np.ndarray, saa: np.ndarray, sbb: np.ndarray, sab: np.ndarray
) -> np.ndarray:
    """Pearson r from raw sums (centred-sum formula); NaN where either variable is constant."""
    with np.errstate(divide="ignore", invalid="ignore"):
        va = n * saa - sa * sa
        vb = n * sbb - sb * sb
        cov = n * sab - sa * sb
        ok = (va > _REL_VAR_TOL * n * saa) & (vb > _REL_VAR_TOL * n * sbb) & (n > 1)
        r = np.where(ok, cov / np.sqrt(np.where(ok, va * vb, 1.0)), np.nan)
    return np.clip(r, -1.0, 1.0)


def _r_xy(s: np.ndarray) -> np.ndarray:
    m = Moment
    return _corr(
        s[..., m.N], s[..., m.SX], s[..., m.SY], s[..., m.SXX], s[..., m.SYY], s[..., m.SXY]
    )


_R_XY_MOMENTS = [Moment.N, Moment.SX, Moment.SY, Moment.SXX, Moment.SYY, Moment.SXY]


def correlations(stats: Float[np.ndarray, "... moment"]) -> dict[str, np.ndarray]:
    """Correlations and means per head from summed statistics (any leading shape).

    ``pearson_r`` r(‖q‖, H); ``pearson_r_log`` r(log‖q‖, H); ``pearson_r_norm_entropy``
    r(‖q‖, H/log n_keys); ``partial_r_position`` r(‖q‖, H | log(pos+1)); ``perm_r`` r of ‖q‖
    permuted within windows vs H (this keeps window means, so it shows the between-window part).
    """
    s = np.asarray(stats, dtype=np.float64)
    if s.shape[-1] != N_MOMENTS:
        raise SpectraError(f"Statistics have {s.shape[-1]} moments, expected {N_MOMENTS}.")
    m = Moment
    n = s[..., m.N]
    r_xy = _r_xy(s)
    r_xz = _corr(n, s[..., m.SX], s[..., m.SZ], s[..., m.SXX], s[..., m.SZZ], s[..., m.SXZ])
    r_yz = _corr(n, s[..., m.SY], s[..., m.SZ], s[..., m.SYY], s[..., m.SZZ], s[..., m.SYZ])
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.sqrt((1 - r_xz**2) * (1 - r_yz**2))
        partial = np.where(denom > 1e-12, (r_xy - r_xz * r_yz) / denom, np.nan)
        mean_q = s[..., m.SX] / n
        mean_h = s[..., m.SY] / n
    return {
        "pearson_r": r_xy,
        "pearson_r_log": _corr(
            n, s[..., m.SLX], s[..., m.SY], s[..., m.SLXLX], s[..., m.SYY], s[..., m.SLXY]
        ),
        "pearson_r_norm_entropy": _corr(
            n, s[..., m.SX], s[..., m.SYN], s[..., m.SXX], s[..., m.SYNYN], s[..., m.SXYN]
        ),
        "partial_r_position": np.clip(partial, -1.0, 1.0),
        "perm_r": _corr(
            n, s[..., m.SX], s[..., m.SY], s[..., m.SXX], s[..., m.SYY], s[..., m.SXPY]
        ),
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
        ok = (vx > _REL_VAR_TOL * s[..., m.SXX].sum(0)) & (vy > _REL_VAR_TOL * s[..., m.SYY].sum(0))
        scale = np.sqrt(np.where(ok, vx * vy, 1.0))
        r = np.where(ok, cxy / scale, np.nan)
        rp = np.where(ok, cpy / scale, np.nan)
    return np.clip(r, -1.0, 1.0), np.clip(rp, -1.0, 1.0)


def naive_p_value(r: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided p of r = 0 treating every token as independent (t on n-2 df). NAIVE: tokens of
    one window are dependent, so this is far too small; reported for comparison only."""
    r = np.asarray(r, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = n - 2
        t = r * np.sqrt(df / np.maximum(1 - r * r, 0.0))
        p = 2 * sps.t.sf(np.abs(t), np.where(df > 0, df, np.nan))
    return np.where(np.isfinite(r) & (df > 0), p, np.nan)


def _fisher_z(r: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))


def cluster_p_value(
    stats: Float[np.ndarray, "window ... moment"],
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p of r(‖q‖, H) = 0 with windows as the independent units, and its standard error.

    Delete-one-window jackknife on Fisher's z: z_i = atanh(r without window i),
    se^2 = (W-1)/W * sum (z_i - mean z_i)^2, t = atanh(r) / se, referred to Student t on W-1 df.
    Why this and not a bootstrap SE: with few clusters the bootstrap SE is biased low (by about
    (W-1)/W and more for skewed statistics) and seed-dependent; the jackknife variance is
    deterministic and, by the Efron-Stein inequality, conservative in expectation. Jackknife
    (CV3) variance with t(W-1) is the recommended few-cluster inference in MacKinnon, Nielsen &
    Webb (2023, J. Econometrics, "Cluster-robust inference: a guide to empirical practice").
    Any dependence inside a window (shared document, position structure) is allowed. In
    simulation (8 windows x 2000 tokens, only window-level effects, true r = 0) it rejects at
    5.7% for a nominal 5%, where the naive test rejects at ~90%. Two-sided (a head passes on
    |r|; its sign is reported separately). Returns NaN with fewer than 3 windows.
    """
    s = np.asarray(stats, dtype=np.float64)[..., _R_XY_MOMENTS]
    n_win = s.shape[0]
    r = _r_xy_sub(s.sum(0))
    if n_win < 3:
        nan = np.full(r.shape, np.nan)
        return nan, nan
    z_loo = _fisher_z(_r_xy_sub(s.sum(0)[None] - s))
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt((n_win - 1) / n_win * ((z_loo - z_loo.mean(0)) ** 2).sum(0))
        t = _fisher_z(r) / se
        p = 2 * sps.t.sf(np.abs(t), n_win - 1)
    return np.where(np.isfinite(r), p, np.nan), se


def _r_xy_sub(s: np.ndarray) -> np.ndarray:
    """r(x, y) from the six ``_R_XY_MOMENTS`` columns only."""
    return _corr(s[..., 0], s[..., 1], s[..., 2], s[..., 3], s[..., 4], s[..., 5])


def cluster_bootstrap_ci(
    stats: Float[np.ndarray, "window ... moment"],
    *,
    n_boot: int = 1000,
    seed: _SEED = 0,
    level: float = 0.95,
    chunk: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of r(‖q‖, H) resampling whole windows with replacement.

    Each replicate draws W window indices once (shared by all heads) as a count vector, and the
    replicate's sums are ``counts @ stats``: one matrix product per chunk of replicates.
    Replicates where r is undefined are ignored. NaN with fewer than 2 windows or n_boot == 0.
    Percentile intervals are somewhat too narrow with few windows (with 8 windows and no true
    correlation, a 95% interval excludes 0 ~9% of the time); the significance test is
    ``cluster_p_value``, not this interval.
    """
    s = np.asarray(stats, dtype=np.float64)[..., _R_XY_MOMENTS]
    n_win = s.shape[0]
    shape = s.shape[1:-1]
    if n_win < 2 or n_boot < 1:
        nan = np.full(shape, np.nan)
        return nan, nan
    if not 0 < level < 1:
        raise SpectraError(f"The confidence level must be in (0, 1), got {level}.")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_win, np.full(n_win, 1.0 / n_win), size=n_boot).astype(np.float64)
    flat = s.reshape(n_win, -1)
    boots = np.empty((n_boot, *shape))
    for start in range(0, n_boot, chunk):
        block = counts[start : start + chunk] @ flat
        boots[start : start + chunk] = _r_xy_sub(block.reshape(-1, *shape, len(_R_XY_MOMENTS)))
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        all_nan = np.all(np.isnan(boots), axis=0)
        filled = np.where(all_nan[None], 0.0, boots)
        low, high = np.nanquantile(filled, [tail, 1 - tail], axis=0)
    return np.where(all_nan, np.nan, low), np.where(all_nan, np.nan, high)


def benjamini_hochberg(p: Float[np.ndarray, " test"]) -> Float[np.ndarray, " test"]:
    """Benjamini-Hochberg q-values (step-up, monotone, capped at 1). NaN p-values are left out
    of the family and get NaN q."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    scaled = pv[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q_ok = np.empty(m)
    q_ok[order] = q_sorted
    q[ok] = q_ok
    return q


def spearman_from_sample(
    sample: pd.DataFrame, n_layers: int, n_heads: int
) -> Float[np.ndarray, "layer head"]:
    """Spearman rho(‖q‖, H) per head over the pooled token sample (columns ``layer, head,
    qnorm, entropy``); NaN for heads absent from the sample."""
    missing = {"layer", "head", "qnorm", "entropy"} - set(sample.columns)
    if missing:
        raise SpectraError(f"The token sample lacks columns {sorted(missing)}.")
    if "model" in sample.columns and sample["model"].nunique() > 1:
        raise SpectraError("The token sample mixes models; pass only the trained model's rows.")
    out = np.full((n_layers, n_heads), np.nan)
    if sample.empty:
        return out
    frame = sample.sort_values(["layer", "head"], kind="stable")
    keys = frame[["layer", "head"]].to_numpy(np.int64)
    if keys.min() < 0 or keys[:, 0].max() >= n_layers or keys[:, 1].max() >= n_heads:
        raise SpectraError("The token sample has layer/head indices outside the statistics.")
    starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
    sizes = np.diff(np.r_[starts, len(frame)])
    x = frame["qnorm"].to_numpy(np.float64)
    y = frame["entropy"].to_numpy(np.float64)
    if np.all(sizes == sizes[0]):
        size = int(sizes[0])
        rx = sps.rankdata(x.reshape(-1, size), axis=1)
        ry = sps.rankdata(y.reshape(-1, size), axis=1)
        rho = _pearson_rows(rx, ry)
    else:
        rho = np.array(
            [
                _pearson_rows(sps.rankdata(x[a : a + b])[None], sps.rankdata(y[a : a + b])[None])[0]
                for a, b in zip(starts, sizes, strict=True)
            ]
        )
    out[keys[starts, 0], keys[starts, 1]] = rho
    return out


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = np.full(a.shape[0], float(a.shape[1]))
    return _corr(n, a.sum(1), b.sum(1), (a * a).sum(1), (b * b).sum(1), (a * b).sum(1))


def _sign(r: np.ndarray) -> np.ndarray:
    return np.where(r < 0, "negative", np.where(r > 0, "positive", "none"))


def head_table(
    trained_stats: Float[np.ndarray, "window layer head moment"],
    trained_sample: pd.DataFrame | None = None,
    random_init_stats: Float[np.ndarray, "window layer head moment"] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    r_threshold: float = 0.5,
    alpha: float = 0.01,
    ci_level: float = 0.95,
) -> pd.DataFrame:
    """One row per (layer, head) from per-window statistics stacked as ``[window, layer, head,
    moment]`` (a list of ``window_stats`` outputs works too).

    Columns: ``layer, head``; ``n_tokens`` (pooled kept tokens), ``n_windows``;
    ``pearson_r`` r(‖q‖, H) over all tokens; ``pearson_r_log`` r(log‖q‖, H); ``spearman_rho``
    rho(‖q‖, H) on the TOKEN SAMPLE only (NaN without one); ``partial_r_position`` r(‖q‖, H |
    log(pos+1)); ``pearson_r_norm_entropy`` r(‖q‖, H/log n_keys); ``ci_low, ci_high`` cluster
    bootstrap percentile CI of pearson_r (windows resampled, ``n_boot`` replicates, ``seed``);
    ``p_naive`` token-level p (NAIVE: tokens as independent); ``p_cluster`` window-level
    jackknife p (see ``cluster_p_value``); ``se_fisher_z`` its standard error; ``q_fdr``
    Benjamini-Hochberg q of p_cluster across all heads; ``perm_r`` r with ‖q‖ permuted within
    windows (pooled, so it keeps the between-window part of r); ``within_window_r`` and
    ``perm_r_within`` the real and permuted r with window means removed (see
    ``within_window_r``); ``random_init_r`` pearson_r of the random-init model (NaN when not given);
    ``passes`` |r| >= r_threshold and q_fdr < alpha; ``sign`` negative/positive/none (H1
    predicts negative); ``mean_qnorm, mean_entropy``.
    """
    s = np.asarray(trained_stats, dtype=np.float64)
    if s.ndim != 4 or s.shape[-1] != N_MOMENTS:
        raise SpectraError(
            f"trained_stats has shape {s.shape}; expected [window, layer, head, {N_MOMENTS}]."
        )
    if s.shape[0] == 0:
        raise SpectraError("No windows: trained_stats is empty.")
    n_layers, n_heads = s.shape[1:3]
    pooled = correlations(s.sum(0))
    ci_low, ci_high = cluster_bootstrap_ci(s, n_boot=n_boot, seed=seed, level=ci_level)
    p_cluster, se = cluster_p_value(s)
    q = benjamini_hochberg(p_cluster.ravel()).reshape(p_cluster.shape)
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
        random_r = _r_xy(rs.sum(0))
    r = pooled["pearson_r"]
    r_within, perm_within = within_window_r(s)
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    columns = {
        "layer": layer,
        "head": head,
        "n_tokens": pooled["n"].astype(np.int64),
        "n_windows": (s[..., Moment.N] > 0).sum(0).astype(np.int64),
        "pearson_r": r,
        "pearson_r_log": pooled["pearson_r_log"],
        "spearman_rho": spearman,
        "partial_r_position": pooled["partial_r_position"],
        "pearson_r_norm_entropy": pooled["pearson_r_norm_entropy"],
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_naive": naive_p_value(r, pooled["n"]),
        "p_cluster": p_cluster,
        "se_fisher_z": se,
        "q_fdr": q,
        "perm_r": pooled["perm_r"],
        "within_window_r": r_within,
        "perm_r_within": perm_within,
        "random_init_r": random_r,
        "passes": (np.abs(np.nan_to_num(r)) >= r_threshold) & (np.nan_to_num(q, nan=1.0) < alpha),
        "sign": _sign(r),
        "mean_qnorm": pooled["mean_qnorm"],
        "mean_entropy": pooled["mean_entropy"],
    }
    return pd.DataFrame({k: np.asarray(v).ravel() for k, v in columns.items()})


def _num(v: float) -> float | None:
    """A JSON-safe float: NaN becomes None."""
    v = float(v)
    return v if math.isfinite(v) else None


def _mean(a: pd.Series) -> float | None:
    a = a.dropna()
    return _num(a.mean()) if len(a) else None


def _max(a: pd.Series) -> float | None:
    a = a.dropna()
    return _num(a.max()) if len(a) else None


def verdict(
    table: pd.DataFrame,
    *,
    r_threshold: float = 0.5,
    alpha: float = 0.01,
    perm_tolerance: float = 0.02,
    min_share: float = 0.10,
    perm_column: str = "perm_r",
) -> dict:
    """Summary of a ``head_table`` against the seed's success criteria (JSON-serialisable).

    A head passes when |pearson_r| >= r_threshold and q_fdr < alpha (recomputed here from the
    table with these arguments). Criteria:
    - effect_size: |r| >= r_threshold in a meaningful subset of heads, where meaningful means at
      least ``min_share`` (10%) of all heads tested. Why 10%: the point of Phase 1 is a cheap
      predictor an inference engine can use, which pays only if a noticeable share of attention
      is covered; and among hundreds of heads a few outliers (e.g. attention-sink heads) reach
      any threshold without saying anything general about attention.
    - significance: the same subset survives correction: heads with |r| >= r_threshold and
      cluster-level BH q < alpha are at least ``min_share`` of all heads.
    - randomization_control: the mean over heads of r with ‖q‖ permuted within windows
      (``perm_column``) is within ``perm_tolerance`` of 0. The default, pooled ``perm_r``, keeps
      any between-window association (documents differing in both mean ‖q‖ and mean H), so it
      can miss the tolerance on real data without a bug; ``perm_column="perm_r_within"`` is the
      exact null (expectation 0). Both are reported when the table has them.
    The random-init, position and within-window numbers are reported, not criteria.
    """
    need = {"layer", "head", "pearson_r", "q_fdr", perm_column, "random_init_r"}
    need |= {"partial_r_position"}
    missing = need - set(table.columns)
    if missing:
        raise SpectraError(f"The head table lacks columns {sorted(missing)}.")
    r = table["pearson_r"]
    strong = r.abs() >= r_threshold
    passing = strong & (table["q_fdr"] < alpha)
    neg, pos = passing & (r < 0), passing & (r > 0)
    total = len(table)
    n_pass = int(passing.sum())

    per_layer = []
    for layer, g in table.groupby("layer", sort=True):
        idx = g.index
        per_layer.append(
            {
                "layer": int(layer),
                "heads": len(g),
                "passing": int(passing[idx].sum()),
                "negative": int(neg[idx].sum()),
                "positive": int(pos[idx].sum()),
                "mean_r": _mean(g["pearson_r"]),
                "min_r": _num(g["pearson_r"].min()),
                "max_r": _num(g["pearson_r"].max()),
            }
        )

    has_random = bool(table["random_init_r"].notna().any())
    perm_mean = _mean(table[perm_column])
    strong_share = float(strong.sum()) / total if total else 0.0
    pass_share = n_pass / total if total else 0.0
    criteria = {
        "effect_size": {
            "description": f"|r| >= {r_threshold} in at least {min_share:.0%} of heads",
            "met": bool(strong_share >= min_share and strong.any()),
            "heads": int(strong.sum()),
            "share": strong_share,
            "required_share": min_share,
        },
        "significance": {
            "description": (
                f"those heads have cluster-level BH q < {alpha} (p < {alpha} after correction), "
                f"still at least {min_share:.0%} of heads"
            ),
            "met": bool(pass_share >= min_share and n_pass > 0),
            "heads": n_pass,
            "share": pass_share,
            "required_share": min_share,
            "strong_heads_not_significant": int((strong & ~passing).sum()),
            "max_q_of_passing": _max(table.loc[passing, "q_fdr"]),
        },
        "randomization_control": {
            "description": (
                f"mean {perm_column} (‖q‖ permuted within windows) within {perm_tolerance} of 0"
            ),
            "met": bool(perm_mean is not None and abs(perm_mean) <= perm_tolerance),
            "column": perm_column,
            "mean_perm_r": perm_mean,
            "tolerance": perm_tolerance,
        },
    }
    share_neg = int(neg.sum()) / n_pass if n_pass else None
    return {
        "hypothesis": "H1: corr(‖q‖, attention entropy) < 0 per head",
        "thresholds": {
            "r_threshold": r_threshold,
            "alpha": alpha,
            "perm_tolerance": perm_tolerance,
            "min_share": min_share,
        },
        "heads_total": total,
        "heads_with_r": int(r.notna().sum()),
        "passing": {
            "total": n_pass,
            "negative": int(neg.sum()),
            "positive": int(pos.sum()),
            "share_of_heads": pass_share,
            "share_negative": share_neg,
        },
        "per_layer": per_layer,
        "controls": {
            "randomization": {
                f"{stat}_{col}": fn(table[col] if stat == "mean" else table[col].abs())
                for col in ("perm_r", "perm_r_within")
                if col in table.columns
                for stat, fn in (("mean", _mean), ("mean_abs", _mean), ("max_abs", _max))
            },
            "random_init": {
                "available": has_random,
                "mean_r": _mean(table["random_init_r"]),
                "mean_abs_r": _mean(table["random_init_r"].abs()),
                "max_abs_r": _max(table["random_init_r"].abs()),
                "heads_abs_r_ge_threshold": int(
                    (table["random_init_r"].abs() >= r_threshold).sum()
                ),
            },
            "position": {
                "mean_abs_r": _mean(r.abs()),
                "mean_abs_partial_r": _mean(table["partial_r_position"].abs()),
                "mean_abs_r_passing": _mean(r[passing].abs()),
                "mean_abs_partial_r_passing": _mean(table.loc[passing, "partial_r_position"].abs()),
            },
            "within_window": {
                "mean_abs_r": _mean(r.abs()),
                "mean_abs_within_window_r": _mean(table["within_window_r"].abs())
                if "within_window_r" in table.columns
                else None,
            },
        },
        "criteria": criteria,
        "all_criteria_met": all(c["met"] for c in criteria.values()),
    }


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def verdict_text(summary: dict) -> str:
    """A few printable lines from ``verdict``'s summary."""
    p, c, ctl = summary["passing"], summary["criteria"], summary["controls"]
    th = summary["thresholds"]
    share_neg = "n/a" if p["share_negative"] is None else f"{p['share_negative']:.0%}"
    lines = [
        f"Heads: {summary['heads_total']}; passing (|r| >= {th['r_threshold']}, cluster q < "
        f"{th['alpha']}): {p['total']} ({p['negative']} negative, {p['positive']} positive; "
        f"{share_neg} negative).",
    ]
    for name, crit in c.items():
        mark = "met" if crit["met"] else "NOT met"
        if name == "randomization_control":
            detail = f"mean perm r = {_fmt(crit['mean_perm_r'], '+.4f')}"
        else:
            detail = f"{crit['heads']} heads ({crit['share']:.1%})"
        lines.append(f"  [{mark}] {crit['description']}: {detail}")
    ri = ctl["random_init"]
    ri_text = (
        f"random-init mean r = {_fmt(ri['mean_r'], '+.3f')}, max |r| = {_fmt(ri['max_abs_r'])}"
        if ri["available"]
        else "random-init control not run"
    )
    rnd, ww = ctl["randomization"], ctl["within_window"]
    lines.append(
        f"Controls: perm r mean {_fmt(rnd.get('mean_perm_r'), '+.4f')}, max |.| "
        f"{_fmt(rnd.get('max_abs_perm_r'))} (window means removed: mean "
        f"{_fmt(rnd.get('mean_perm_r_within'), '+.4f')}); {ri_text}; mean |r| = "
        f"{_fmt(ctl['position']['mean_abs_r'])}, controlling for position "
        f"{_fmt(ctl['position']['mean_abs_partial_r'])}, within windows "
        f"{_fmt(ww['mean_abs_within_window_r'])}."
    )
    lines.append(
        "Verdict: all seed criteria met." if summary["all_criteria_met"] else "Verdict: not met."
    )
    return "\n".join(lines)
