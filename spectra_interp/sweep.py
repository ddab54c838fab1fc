"""The Phase 1 run: corpus -> windows -> per-window statistics (resumable shards) -> verdict.

Windows are processed in fixed blocks of `batch_size` (block k holds windows k*B .. k*B+B-1),
so a resumed or distributed run computes every window in the same batch as an uninterrupted
one and the final numbers are identical. Under torchrun, blocks are dealt to ranks round-robin;
each rank writes its own shards and rank 0 merges them.
"""

from __future__ import annotations

import gc
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from spectra_interp import analysis, models, store
from spectra_interp.config import SweepConfig
from spectra_interp.data import Windows, added_bos_id, load_corpus
from spectra_interp.distributed import Dist
from spectra_interp.errors import SpectraError
from spectra_interp.extract import PATTERN_HOOK, Q_HOOK, extract

ATTENTION_SAMPLE_TOKENS = 48
STRONGEST_SHOWN = 10


@dataclass(frozen=True)
class Block:
    """A fixed group of window indices (rows of the token array) run as one batch."""

    index: int
    rows: np.ndarray


def blocks(n_windows: int, batch_size: int) -> list[Block]:
    return [
        Block(i, np.arange(s, min(s + batch_size, n_windows)))
        for i, s in enumerate(range(0, n_windows, batch_size))
    ]


def control_source(config: SweepConfig) -> tuple[str, int]:
    """The random-init control: the same architecture with fresh weights (another seed if the
    studied model is itself random)."""
    name = config.model.removeprefix("random:")
    return f"random:{name}", config.seed + (1 if config.model.startswith("random:") else 0)


def window_record(
    qnorm: np.ndarray, entropy: np.ndarray, n_keys: np.ndarray, config: SweepConfig, wid: int
) -> dict[str, np.ndarray]:
    """One window's shard: sufficient statistics and the token sample (pure)."""
    seed = (config.seed, wid)
    stats = analysis.window_stats(
        qnorm, entropy, n_keys, skip_first=config.skip_first, perm_seed=seed
    )
    sample = analysis.token_sample(
        qnorm, entropy, n_keys, skip_first=config.skip_first, k=config.sample_per_window, seed=seed
    )
    return {
        "stats": stats,
        "moments": np.array(analysis.MOMENTS),
        "stats_version": np.array(analysis.STATS_VERSION),
        **{f"sample_{k}": v for k, v in sample.items()},
    }


def pending_blocks(
    all_blocks: list[Block], window_ids: np.ndarray, done: set[int], dist: Dist
) -> list[Block]:
    mine = [b for b in all_blocks if b.index % dist.world_size == dist.rank]
    return [b for b in mine if not set(window_ids[b.rows].tolist()) <= done]


def run_model_pass(
    model: Any,
    label: str,
    windows: Windows,
    config: SweepConfig,
    out: Path,
    dist: Dist,
    progress: bool,
) -> dict[str, float]:
    """Extract and store every pending window of this rank; returns throughput numbers."""
    window_ids = windows.meta["window_id"].to_numpy()
    todo = pending_blocks(
        blocks(len(window_ids), config.batch_size), window_ids, store.done_windows(out, label), dist
    )
    n_todo = sum(len(b.rows) for b in todo)
    bar = tqdm(
        total=n_todo, desc=f"{label} windows", unit="win", disable=not progress or dist.rank != 0
    )
    tokens_done, seconds = 0, 0.0
    for block in todo:
        start = time.perf_counter()
        result = extract(
            model,
            torch.from_numpy(windows.tokens[block.rows]),
            method=config.method,
            layers_per_pass=config.layers_per_pass,
        )
        n_keys = result.n_keys.numpy()
        for i, row in enumerate(block.rows):
            wid = int(window_ids[row])
            record = window_record(
                result.qnorm[i].numpy(), result.entropy[i].numpy(), n_keys, config, wid
            )
            store.write_shard(out, label, wid, **record)
        seconds += time.perf_counter() - start
        tokens_done += windows.tokens[block.rows].size
        bar.update(len(block.rows))
        bar.set_postfix(tok_s=f"{tokens_done / seconds:,.0f}")
    bar.close()
    return {"windows": n_todo, "tokens": tokens_done, "seconds": round(seconds, 3)}


def attention_sample(model: Any, tokens: np.ndarray, tokenizer: Any) -> dict[str, np.ndarray]:
    """Patterns of every head on a short excerpt (the first tokens of window 0), for the views."""
    excerpt = torch.from_numpy(tokens[:ATTENTION_SAMPLE_TOKENS])[None].to(model.cfg.device)
    n_layers = model.cfg.n_layers
    names = [PATTERN_HOOK.format(layer=layer) for layer in range(n_layers)]
    names += [Q_HOOK.format(layer=layer) for layer in range(n_layers)]
    result = extract(model, excerpt)
    with torch.inference_mode():
        _, cache = model.run_with_cache(excerpt, names_filter=names, stop_at_layer=n_layers)
    pattern = torch.stack([cache[PATTERN_HOOK.format(layer=layer)][0] for layer in range(n_layers)])
    return {
        "token_strs": np.array([tokenizer.decode([t]) for t in excerpt[0].tolist()]),
        "pattern": pattern.half().cpu().numpy(),
        "qnorm": result.qnorm[0].numpy(),
        "entropy": result.entropy[0].numpy(),
    }


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Versions and hardware for config.json."""
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            name: version(name)
            for name in ("spectra_interp", "torch", "transformer-lens", "transformers", "numpy")
        },
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype).removeprefix("torch."),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def prepare_windows(config: SweepConfig, out: Path, tokenizer: Any, dist: Dist) -> Windows:
    """The run's windows: read back from the folder on resume, else built and written once."""
    tokens_file, meta_file = out / "windows" / "tokens.npy", out / "windows" / "meta.csv"
    if tokens_file.exists() and meta_file.exists():
        bos = added_bos_id(tokenizer) is not None
        return Windows(tokens=np.load(tokens_file), meta=pd.read_csv(meta_file), bos=bos)
    windows = load_corpus(
        config.corpus,
        tokenizer,
        config.ctx,
        stride=config.stride,
        max_windows=config.max_windows,
        seed=config.seed,
        pack=config.pack,
    )
    if dist.rank == 0:
        store.write_with(tokens_file, lambda buf: np.save(buf, windows.tokens))
        store.write_csv(meta_file, windows.meta)
    return windows


def check_context(config: SweepConfig) -> None:
    """ctx beyond the model's positions is an error before any weights are loaded."""
    hf_config = models.load_config(config.model)
    limit = getattr(hf_config, "max_position_embeddings", None) or getattr(
        hf_config, "n_positions", None
    )
    if limit and config.ctx > limit:
        raise SpectraError(f"--ctx {config.ctx} exceeds the {limit} positions of {config.model}.")


def estimate_bytes(config: SweepConfig, n_layers: int, n_heads: int) -> int:
    """Disk the run will write: tokens, shards (stats + sample) for both models, a margin."""
    n = config.max_windows or 64
    per_window = n_layers * n_heads * (analysis.N_MOMENTS * 8 + config.sample_per_window * 8)
    return int(n * (config.ctx * 8 + 2 * per_window) + 64 * 2**20)


def run_sweep(config: SweepConfig, *, progress: bool = True, log: Any = print) -> Path:
    """Run (or resume) the sweep of `config`; returns the results folder."""
    dist = Dist.from_env(config.device)
    if config.device_map and dist.world_size > 1:
        raise SpectraError("--device-map spreads one model over all GPUs; run it without torchrun.")
    try:
        return _run(config, dist, progress, log)
    finally:
        dist.close()


def _run(config: SweepConfig, dist: Dist, progress: bool, log: Any) -> Path:
    out = config.out_dir
    device = models.pick_device(dist.device_for(config.device))
    dtype = models.pick_dtype(config.dtype, device)
    check_context(config)
    hf_config = models.load_config(config.model)
    if dist.rank == 0:
        store.check_writable(
            out,
            estimate_bytes(config, hf_config.num_hidden_layers, hf_config.num_attention_heads),
        )
        resumed = store.prepare_folder(out, config.identity(), config.overwrite)
        if resumed:
            log(f"Resuming {out}: {len(store.done_windows(out, 'trained'))} windows already done.")
    dist.barrier()
    tokenizer = models.load_tokenizer(config.model)
    windows = prepare_windows(config, out, tokenizer, dist)
    dist.barrier()
    if dist.rank == 0:
        store.write_json(
            out / "config.json",
            {
                "schema_version": store.SCHEMA_VERSION,
                "identity": config.identity(),
                "config": config.to_dict(),
                "environment": environment(device, dtype),
                "n_windows": int(len(windows.tokens)),
                "bos": bool(windows.bos),
                "q_hook": Q_HOOK,
                "pattern_hook": PATTERN_HOOK,
                "world_size": dist.world_size,
            },
        )
    timings = {}
    for label, source, seed in model_passes(config):
        device_map = config.device_map if label == "trained" else None
        model = models.load_model(
            source, device=str(device), dtype=dtype, seed=seed, device_map=device_map
        )
        timings[label] = run_model_pass(model, label, windows, config, out, dist, progress)
        if label == "trained" and dist.rank == 0:
            store.write_npz(
                out / "attention_sample.npz",
                **attention_sample(model, windows.tokens[0], tokenizer),
            )
        del model
        release_memory(device)
    dist.barrier()
    if not dist.on_one_host():
        dist.collect_files(out, own_shards(windows, config, dist))
    if dist.rank == 0:
        finalize(out, config, timings, log)
    return out


def own_shards(windows: Windows, config: SweepConfig, dist: Dist) -> list[str]:
    """This rank's shard files, relative to the results folder."""
    window_ids = windows.meta["window_id"].to_numpy()
    mine = pending_blocks(blocks(len(window_ids), config.batch_size), window_ids, set(), dist)
    labels = [label for label, _, _ in model_passes(config)]
    return [
        str(store.shard_path(Path(), label, int(window_ids[row])))
        for label in labels
        for block in mine
        for row in block.rows
    ]


def model_passes(config: SweepConfig) -> Iterator[tuple[str, str, int]]:
    yield "trained", config.model, config.seed
    if "random-init" in config.controls:
        source, seed = control_source(config)
        yield "random_init", source, seed


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def load_stats(out: Path, label: str, window_ids: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """Stacked per-window statistics [window, layer, head, moment] and the token sample frame."""
    missing = sorted(set(window_ids.tolist()) - store.done_windows(out, label))
    if missing:
        raise SpectraError(
            f"{out}: {len(missing)} {label} windows have no shard (e.g. {missing[0]})."
        )
    stats, frames = [], []
    for wid in window_ids.tolist():
        shard = store.read_shard(out, label, wid)
        if int(shard["stats_version"]) != analysis.STATS_VERSION:
            raise SpectraError(f"{out}: shard of window {wid} has another statistics version.")
        stats.append(shard["stats"])
        sample = {k.removeprefix("sample_"): v for k, v in shard.items() if k.startswith("sample_")}
        frames.append(analysis.sample_frame(sample, window_id=wid, model=label))
    return np.stack(stats), pd.concat(frames, ignore_index=True)


def finalize(out: Path, config: SweepConfig, timings: dict[str, Any], log: Any) -> None:
    """Merge the shards into head_stats.csv, summary.json, the token sample and the report."""
    window_ids = pd.read_csv(out / "windows" / "meta.csv")["window_id"].to_numpy()
    trained, sample = load_stats(out, "trained", window_ids)
    random_init, random_sample = None, None
    if "random-init" in config.controls:
        random_init, random_sample = load_stats(out, "random_init", window_ids)
    table = analysis.head_table(
        trained, sample, random_init, n_boot=config.n_boot, seed=config.seed
    )
    summary = analysis.verdict(table)
    summary["run"] = {
        "model": config.model,
        "corpus": config.corpus,
        "ctx": config.ctx,
        "n_windows": int(len(window_ids)),
        "skip_first": config.skip_first,
        "controls": list(config.controls),
        "seed": config.seed,
        "timings": timings,
    }
    store.write_csv(out / "head_stats.csv", table)
    store.write_json(out / "summary.json", summary)
    frames = [sample] if random_sample is None else [sample, random_sample]
    store.write_parquet(out / "token_sample.parquet", pd.concat(frames, ignore_index=True))
    log(analysis.verdict_text(summary))
    log(strongest_heads(table).to_string(index=False))
    if config.report:
        from spectra_interp.viz.report import build_report

        log(f"Report: {build_report(out)}")
    log(f"Results: {out}")


def strongest_heads(table: pd.DataFrame, n: int = STRONGEST_SHOWN) -> pd.DataFrame:
    """The heads with the largest |r|, as a short printable table."""
    columns = ["layer", "head", "pearson_r", "ci_low", "ci_high", "partial_r_position", "q_fdr"]
    top = table.reindex(table["pearson_r"].abs().sort_values(ascending=False).index).head(n)
    return top[columns + ["passes"]].round(3)
