"""The token sample: the same k positions of a window for every head, kept for rank statistics,
plots and the statistics that need each query's logits (drawn before the forward pass)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from jaxtyping import Float, Int
from scipy import stats as sps

from spectra_interp.errors import SpectraError
from spectra_interp.stats.moments import Seed, corr, kept_positions


def sample_positions(n_pos: int, skip_first: int, k: int, seed: Seed) -> Int[np.ndarray, " k"]:
    """k positions from ``skip_first`` on, without replacement, sorted; all when fewer remain.
    Reproducible from ``seed`` (pass e.g. ``(run_seed, window_id)``)."""
    if k < 1:
        raise SpectraError(f"The token sample needs k >= 1 positions per window, got {k}.")
    if skip_first < 0:
        raise SpectraError(f"skip_first must be >= 0, got {skip_first}.")
    if skip_first == 0:
        raise SpectraError(
            "Position 0 sees 1 key, so H/log(n_keys) is undefined; use skip_first >= 1."
        )
    if skip_first >= n_pos:
        raise SpectraError(
            f"skip_first={skip_first} leaves no positions in a window of {n_pos} tokens."
        )
    n_kept = n_pos - skip_first
    idx = np.sort(np.random.default_rng(seed).choice(n_kept, size=min(k, n_kept), replace=False))
    return (skip_first + idx).astype(np.int64)


def token_sample(
    qnorm: Float[np.ndarray, "layer head pos"],
    entropy: Float[np.ndarray, "layer head pos"],
    n_keys: Int[np.ndarray, "layer pos"],
    positions: Int[np.ndarray, " k"],
    extras: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """One window's sample at `positions` (from `sample_positions`): ``pos`` (int64 ``[k]``),
    ``n_keys`` (int64 ``[layer, k]``), ``qnorm`` and ``entropy`` (float32 ``[layer, head, k]``),
    and the extras measured for those queries (``[layer, head, k, ...]``) as they are."""
    positions = np.asarray(positions, dtype=np.int64)
    skip_first = int(positions.min()) if positions.size else 0
    kept = kept_positions(qnorm, entropy, n_keys, skip_first)
    idx = positions - skip_first
    return {
        "pos": positions,
        "n_keys": kept.n_keys[:, idx],
        "qnorm": kept.qnorm[..., idx].astype(np.float32),
        "entropy": kept.entropy[..., idx].astype(np.float32),
        **(extras or {}),
    }


def sample_frame(
    sample: dict[str, np.ndarray], *, window_id: int, model: str = "trained"
) -> pd.DataFrame:
    """One window's token sample as long rows: ``model, window_id, layer, head, pos, n_keys``
    and one column per ``[layer, head, k]`` array of the sample (``qnorm``, ``entropy``, ...)."""
    n_layer, n_head, k = sample["qnorm"].shape
    layer, head, i = np.meshgrid(np.arange(n_layer), np.arange(n_head), np.arange(k), indexing="ij")
    layer, head, i = layer.ravel(), head.ravel(), i.ravel()
    n_keys = np.asarray(sample["n_keys"])
    if n_keys.ndim == 1:
        n_keys = np.broadcast_to(n_keys, (n_layer, k))
    columns = {
        "model": model,
        "window_id": np.int64(window_id),
        "layer": layer.astype(np.int64),
        "head": head.astype(np.int64),
        "pos": sample["pos"][i],
        "n_keys": n_keys[layer, i].astype(np.int64),
    }
    for name, values in sample.items():
        if name not in columns and np.ndim(values) == 3:
            columns[name] = np.asarray(values).ravel()
    return pd.DataFrame(columns)


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
        rho = pearson_rows(rx, ry)
    else:
        rho = np.array(
            [
                pearson_rows(sps.rankdata(x[a : a + b])[None], sps.rankdata(y[a : a + b])[None])[0]
                for a, b in zip(starts, sizes, strict=True)
            ]
        )
    out[keys[starts, 0], keys[starts, 1]] = rho
    return out


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair."""
    n = np.full(a.shape[0], float(a.shape[1]))
    return corr(n, a.sum(1), b.sum(1), (a * a).sum(1), (b * b).sum(1), (a * b).sum(1))
