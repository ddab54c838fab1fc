"""A synthetic results folder that matches the contract, for the viz tests (no model, no sweep)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from spectra_interp.analysis import verdict


def _head_correlations(n_layers: int, n_heads: int, rng: np.random.Generator) -> np.ndarray:
    """A target correlation per head: mostly weak, a few strongly negative, one positive."""
    rho = rng.uniform(-0.25, 0.25, size=(n_layers, n_heads))
    n_strong = max(1, (n_layers * n_heads) // 5)
    idx = rng.choice(n_layers * n_heads, size=n_strong + 1, replace=False)
    rho.flat[idx[:-1]] = rng.uniform(-0.85, -0.55, size=n_strong)
    rho.flat[idx[-1]] = 0.6
    return rho


def _sample(
    rho: np.ndarray, n_windows: int, ctx: int, per_window: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Token-sample rows for one model: entropy below log(n_keys), correlated with ‖q‖ by rho."""
    n_layers, n_heads = rho.shape
    pos = np.stack([np.sort(rng.choice(ctx, per_window, replace=False)) for _ in range(n_windows)])
    shape = (n_layers, n_heads, n_windows, per_window)
    z = rng.standard_normal(shape)
    noise = rng.standard_normal(shape)
    r = rho[:, :, None, None]
    t = r * z + np.sqrt(1 - r**2) * noise
    n_keys = pos + 1
    scale = rng.uniform(4.0, 12.0, size=(n_layers, n_heads, 1, 1))
    qnorm = scale * np.exp(0.25 * z)
    entropy = np.log(n_keys)[None, None] / (1.0 + np.exp(-(0.5 + 0.8 * t)))
    grid = np.meshgrid(np.arange(n_layers), np.arange(n_heads), np.arange(n_windows), indexing="ij")
    rows = {
        "window_id": np.broadcast_to(grid[2][..., None], shape).ravel(),
        "layer": np.broadcast_to(grid[0][..., None], shape).ravel(),
        "head": np.broadcast_to(grid[1][..., None], shape).ravel(),
        "pos": np.broadcast_to(pos[None, None], shape).ravel(),
        "n_keys": np.broadcast_to(n_keys[None, None], shape).ravel(),
        "qnorm": qnorm.astype(np.float32).ravel(),
        "entropy": entropy.astype(np.float32).ravel(),
    }
    return pd.DataFrame(rows)


def _head_table(trained: pd.DataFrame, random_init: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A head table with the contract's columns, computed loosely from the sample."""
    rng = np.random.default_rng(seed + 1)
    out = []
    rand_r = random_init.groupby(["layer", "head"])[["qnorm", "entropy"]].corr().unstack()
    for (layer, head), g in trained.groupby(["layer", "head"]):
        r = float(np.corrcoef(g.qnorm, g.entropy)[0, 1])
        n = len(g)
        half = 1.96 / np.sqrt(g.window_id.nunique() * 8)
        p = float(np.exp(-abs(r) * 40))
        out.append(
            {
                "layer": layer,
                "head": head,
                "n_tokens": n,
                "n_windows": int(g.window_id.nunique()),
                "pearson_r": r,
                "pearson_r_log": r * 0.97,
                "spearman_rho": r * 0.95,
                "partial_r_position": r * 0.9,
                "pearson_r_norm_entropy": r * 0.92,
                "ci_low": max(-1.0, r - half),
                "ci_high": min(1.0, r + half),
                "p_naive": p / 100,
                "p_cluster": p,
                "q_fdr": min(1.0, p * 3),
                "perm_r": float(rng.normal(0, 0.02)),
                "random_init_r": float(rand_r.loc[(layer, head), ("qnorm", "entropy")]),
            }
        )
    table = pd.DataFrame(out)
    table["passes"] = (table.pearson_r.abs() >= 0.5) & (table.q_fdr < 0.01)
    table["sign"] = np.where(table.pearson_r < 0, "negative", "positive")
    return table


def make_fake_results(
    path: Path,
    n_layers: int = 4,
    n_heads: int = 3,
    *,
    n_windows: int = 4,
    ctx: int = 64,
    per_window: int = 32,
    excerpt: int = 16,
    seed: int = 0,
) -> Path:
    """Write a results folder as the sweep would (contract in /work/contracts.md); return it."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    (path / "windows").mkdir(parents=True, exist_ok=True)
    for model in ("trained", "random_init"):
        (path / "shards" / model).mkdir(parents=True, exist_ok=True)

    tokens = rng.integers(0, 49152, size=(n_windows, ctx), dtype=np.int64)
    np.save(path / "windows" / "tokens.npy", tokens)
    pd.DataFrame(
        {
            "window_id": np.arange(n_windows),
            "source": "fake",
            "doc_id": [f"doc{i // 2}" for i in range(n_windows)],
            "token_offset": np.arange(n_windows) * ctx,
        }
    ).to_csv(path / "windows" / "meta.csv", index=False)

    rho = _head_correlations(n_layers, n_heads, rng)
    trained = _sample(rho, n_windows, ctx, per_window, rng)
    random_init = _sample(np.zeros_like(rho), n_windows, ctx, per_window, rng)
    sample = pd.concat(
        [trained.assign(model="trained"), random_init.assign(model="random_init")],
        ignore_index=True,
    )
    sample = sample[["model", "window_id", "layer", "head", "pos", "n_keys", "qnorm", "entropy"]]
    sample.to_parquet(path / "token_sample.parquet", index=False)

    table = _head_table(trained, random_init, seed)
    table.to_csv(path / "head_stats.csv", index=False)

    summary = verdict(table)
    (path / "summary.json").write_text(json.dumps(summary, indent=2))

    t = min(excerpt, ctx)
    logits = rng.standard_normal((n_layers, n_heads, t, t)) * 2.0
    logits[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
    pattern = np.exp(logits - logits.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    entropy = -(pattern * np.log(np.where(pattern > 0, pattern, 1.0))).sum(-1)
    words = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
    np.savez(
        path / "attention_sample.npz",
        token_strs=np.array(["<|endoftext|>"] + [words[i % len(words)] for i in range(t - 1)]),
        pattern=pattern.astype(np.float16),
        qnorm=rng.uniform(3, 12, size=(n_layers, n_heads, t)).astype(np.float32),
        entropy=entropy.astype(np.float32),
    )

    settings = {
        "model": "fake-model",
        "corpus": "bundled",
        "ctx": ctx,
        "max_windows": n_windows,
        "batch_size": 1,
        "device": "auto",
        "dtype": "auto",
        "method": "stream",
        "layers_per_pass": 4,
        "skip_first": 1,
        "controls": ["randomization", "random-init", "position"],
        "seed": seed,
    }
    config = {
        "schema_version": 1,
        "identity": settings,
        "config": {**settings, "out": str(path)},
        "environment": {"device": "cpu", "dtype": "float32", "git_commit": "0123456789abcdef"},
        "n_windows": n_windows,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path
