"""A results folder made by the real sweep code from synthetic per-window ‖q‖ and H (no model):
the shards by `window_record`, the table, verdict and token sample by `finalize`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spectra_interp.config import SweepConfig
from spectra_interp.distributed import Dist
from spectra_interp.metrics import attention_entropy, query_extras, visible_keys
from spectra_interp.results import store
from spectra_interp.results.layout import SweepLayout
from spectra_interp.sweep import config_record, finalize, window_positions, window_record

SYNTHETIC_KEYS = 32
WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]


def planted_correlations(n_layers: int, n_heads: int, rng: np.random.Generator) -> np.ndarray:
    """A target correlation per head: mostly weak, a fifth strongly negative, one positive."""
    rho = rng.uniform(-0.25, 0.25, size=(n_layers, n_heads))
    n_strong = max(1, (n_layers * n_heads) // 5)
    idx = rng.choice(n_layers * n_heads, size=n_strong + 1, replace=False)
    rho.flat[idx[:-1]] = rng.uniform(-0.85, -0.55, size=n_strong)
    rho.flat[idx[-1]] = 0.75
    return rho


def synthetic_window(
    rho: np.ndarray, scale: np.ndarray, ctx: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """‖q‖ and H [layer, head, pos] for one window: ‖q‖ around each head's `scale`, H below
    log(keys seen), correlated with ‖q‖ by about rho per head."""
    shape = (*rho.shape, ctx)
    z, noise = rng.standard_normal(shape), rng.standard_normal(shape)
    t = rho[..., None] * z + np.sqrt(1 - rho[..., None] ** 2) * noise
    qnorm = scale[..., None] * np.exp(0.25 * z)
    ceiling = np.log(np.arange(1, ctx + 1))
    entropy = np.clip(2.0 + 0.9 * t, 0.0, ceiling)
    return qnorm.astype(np.float32), entropy.astype(np.float32)


def synthetic_extras(
    qnorm: np.ndarray, positions: np.ndarray, config: SweepConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The sampled queries' extras by the real `query_extras`, from logits ‖q‖ · g with random
    directions g over the last `SYNTHETIC_KEYS` keys a query sees (a query's temperature set
    by its norm; few keys keep the fixture fast)."""
    import torch

    n_layers, n_heads, _ = qnorm.shape
    n_keys = min(SYNTHETIC_KEYS, config.ctx)
    g = rng.standard_normal((n_layers, n_heads, len(positions), n_keys)) * 0.3
    logits = torch.from_numpy(qnorm[..., positions, None] * g).float()
    allowed = visible_keys(torch.from_numpy(np.minimum(positions, n_keys - 1)), n_keys, None)[None]
    out = query_extras(logits, allowed, softcap=None, scales=config.q_scales, mass=config.keff_mass)
    return {name: value.numpy() for name, value in out.items()}


def attention_slices(
    n_layers: int, n_heads: int, t: int, rng: np.random.Generator, n_slices: int = 2
) -> dict[str, np.ndarray]:
    """Causal softmax patterns of random logits for a few slices, with their entropies."""
    import torch

    logits = rng.standard_normal((n_slices, n_layers, n_heads, t, t)) * 2.0
    logits[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
    pattern = np.exp(logits - logits.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    entropy = attention_entropy(torch.from_numpy(pattern).flatten(0, 1)).numpy()
    words = ["<|endoftext|>"] + [WORDS[i % len(WORDS)] for i in range(t - 1)]
    return {
        "window_ids": np.arange(n_slices),
        "starts": np.full(n_slices, 8),
        "token_strs": np.array([words] * n_slices),
        "pattern": pattern.astype(np.float16),
        "qnorm": rng.uniform(3, 12, size=(n_slices, n_layers, n_heads, t)).astype(np.float32),
        "entropy": entropy.reshape(n_slices, n_layers, n_heads, t),
    }


def make_fake_results(
    path: Path,
    n_layers: int = 4,
    n_heads: int = 3,
    *,
    n_windows: int = 8,
    ctx: int = 64,
    per_window: int = 32,
    excerpt: int = 16,
    seed: int = 0,
) -> Path:
    """Write a complete results folder of `n_layers` x `n_heads` synthetic heads; return it."""
    config = SweepConfig(
        model="fake-model",
        ctx=ctx,
        max_windows=n_windows,
        sample_per_window=per_window,
        n_boot=200,
        seed=seed,
        out=str(path),
        report=False,
    )
    layout = SweepLayout(Path(path))
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 49152, size=(n_windows, ctx), dtype=np.int64)
    store.write_with(layout.tokens, lambda buf: np.save(buf, tokens))
    meta = pd.DataFrame(
        {
            "window_id": np.arange(n_windows),
            "source": "fake",
            "doc_id": [f"doc{i // 2}" for i in range(n_windows)],
            "token_offset": np.arange(n_windows) * ctx,
        }
    )
    store.write_csv(layout.meta, meta)
    n_keys = np.broadcast_to(np.arange(1, ctx + 1), (n_layers, ctx))
    planted = {
        "trained": planted_correlations(n_layers, n_heads, rng),
        "random_init": np.zeros((n_layers, n_heads)),
    }
    for label, rho in planted.items():
        scale = rng.uniform(4.0, 12.0, size=rho.shape)
        for wid in range(n_windows):
            qnorm, entropy = synthetic_window(rho, scale, ctx, rng)
            extras = synthetic_extras(qnorm, window_positions(config, wid), config, rng)
            record = window_record(qnorm, entropy, n_keys, config, wid, extras)
            store.write_shard(layout, label, wid, **record)
    record = config_record(config, Dist())
    record["n_windows"] = n_windows
    record["environment"] = {"device": "cpu", "dtype": "float32", "git_commit": "0123456789abcdef"}
    store.write_json(layout.config, record)
    slices = attention_slices(n_layers, n_heads, min(excerpt, ctx), rng)
    store.write_npz(layout.attention, **slices)
    store.write_json(layout.summary, finalize(layout, config, {}, log=lambda *_: None).to_json())
    return layout.root
