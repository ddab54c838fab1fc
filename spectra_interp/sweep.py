"""The Phase 1 run: corpus -> windows -> per-window statistics (resumable shards) -> verdict.

Windows are processed in fixed blocks of `batch_size` (block k holds windows k*B .. k*B+B-1),
so a resumed, shared or distributed run computes every window in the same batch as an
uninterrupted one and the final numbers are identical. Under torchrun, blocks are dealt to ranks
round-robin; each rank writes its own shards and rank 0 merges them. A block is claimed before it
is computed, so two runs started on one folder share the work instead of repeating it.
"""

from __future__ import annotations

import gc
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from spectra_interp import models
from spectra_interp.config import SweepConfig
from spectra_interp.corpus import Windows, added_bos_id, load_corpus
from spectra_interp.distributed import Dist, run_distributed
from spectra_interp.errors import SpectraError
from spectra_interp.extract import SampleRequest, extract, q_source
from spectra_interp.metrics import attention_entropy, query_norm
from spectra_interp.models import hooks
from spectra_interp.results import store
from spectra_interp.results.layout import SCHEMA_VERSION, SweepLayout
from spectra_interp.results.load import load_shards, shard_record
from spectra_interp.stats.beyond import alpha_response
from spectra_interp.stats.clusters import Clusters
from spectra_interp.stats.degenerate import control_usability, degenerate_reasons
from spectra_interp.stats.moments import N_MOMENTS, Moments
from spectra_interp.stats.sample import sample_positions, token_sample
from spectra_interp.stats.table import head_table
from spectra_interp.stats.verdict import verdict, verdict_text

STRONGEST_SHOWN = 10
CLAIM_POLL_S = 2.0
Log = Callable[[str], Any]


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


def rank_blocks(n_windows: int, batch_size: int, dist: Dist) -> list[Block]:
    """The blocks this rank computes (all of them in a single process)."""
    return [b for b in blocks(n_windows, batch_size) if b.index % dist.world_size == dist.rank]


def control_source(config: SweepConfig) -> tuple[str, int]:
    """The random-init control: the same architecture with fresh weights (another seed if the
    studied model is itself random)."""
    name = config.model.removeprefix("random:")
    return f"random:{name}", config.seed + (1 if config.model.startswith("random:") else 0)


def model_passes(config: SweepConfig) -> Iterator[tuple[str, str, int]]:
    yield "trained", config.model, config.seed
    if "random-init" in config.controls:
        source, seed = control_source(config)
        yield "random_init", source, seed


def window_positions(config: SweepConfig, wid: int) -> np.ndarray:
    """The token sample's positions in window `wid` (drawn before its forward pass)."""
    k = config.sample_per_window
    return sample_positions(config.ctx, config.skip_first, k, (config.seed, wid))


def sample_request(config: SweepConfig, window_ids: list[int]) -> SampleRequest:
    positions = np.stack([window_positions(config, wid) for wid in window_ids])
    return SampleRequest(torch.from_numpy(positions), config.q_scales, config.keff_mass)


def window_record(
    qnorm: np.ndarray,
    entropy: np.ndarray,
    n_keys: np.ndarray,
    config: SweepConfig,
    wid: int,
    extras: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """One window's shard: sufficient statistics and the token sample (pure)."""
    stats = Moments.of_window(
        qnorm, entropy, n_keys, skip_first=config.skip_first, perm_seed=(config.seed, wid)
    )
    sample = token_sample(qnorm, entropy, n_keys, window_positions(config, wid), extras)
    return shard_record(stats.sums, sample)


def run_model_pass(
    model: Any,
    label: str,
    windows: Windows,
    config: SweepConfig,
    layout: SweepLayout,
    dist: Dist,
    log: Log,
) -> dict[str, float]:
    """Extract and store every window of this rank not yet done (see `run_blocks`); returns this
    process's throughput."""
    window_ids = windows.meta["window_id"].to_numpy()

    def compute(block: Block) -> int:
        _compute_block(model, label, windows, window_ids, block, config, layout)
        return int(windows.tokens[block.rows].size)

    return run_blocks(
        label, window_ids, config.batch_size, layout, dist, compute, config.progress, log
    )


def run_blocks(
    label: str,
    window_ids: np.ndarray,
    batch_size: int,
    layout: Any,
    dist: Dist,
    compute: Callable[[Block], int],
    progress: bool,
    log: Log,
) -> dict[str, float]:
    """Compute every block of this rank whose windows have no `label` shard yet, claiming each
    block first and waiting for blocks another live run holds. `compute(block)` writes the
    block's shards and returns the tokens it read; `layout` is any results layout with
    `claim(label, block)` and `done_windows(label)`. Returns this process's throughput."""

    def done(block: Block) -> bool:
        return set(window_ids[block.rows].tolist()) <= layout.done_windows(label)

    todo = [b for b in rank_blocks(len(window_ids), batch_size, dist) if not done(b)]
    total = sum(len(b.rows) for b in todo)
    bar = tqdm(
        total=total,
        desc=f"{label} windows",
        unit="win",
        disable=not progress or dist.rank != 0,
    )
    computed, tokens_done, seconds, waited = 0, 0, 0.0, False
    while todo:
        for block in todo:
            claim = layout.claim(label, block.index)
            if done(block) or not store.try_claim(claim):
                continue
            try:
                if not done(block):
                    start = time.perf_counter()
                    tokens_done += compute(block)
                    seconds += time.perf_counter() - start
                    computed += len(block.rows)
                    bar.update(len(block.rows))
            finally:
                store.release_claim(claim)
            bar.set_postfix(tok_s=f"{tokens_done / max(seconds, 1e-9):,.0f}")
        todo = [b for b in todo if not done(b)]
        bar.update(total - sum(len(b.rows) for b in todo) - bar.n)
        if todo:
            if not waited:
                log(
                    f"{layout.root} is shared with another run: waiting for the {label} windows "
                    "it is computing (its shards will be used here too)."
                )
                waited = True
            time.sleep(CLAIM_POLL_S)
    bar.close()
    if total:
        shared = f"; {total - computed} by another run" if computed < total else ""
        log(f"{label}: {computed} windows computed here{shared}.")
    return {"windows": computed, "tokens": tokens_done, "seconds": round(seconds, 3)}


def _compute_block(
    model: Any,
    label: str,
    windows: Windows,
    window_ids: np.ndarray,
    block: Block,
    config: SweepConfig,
    layout: SweepLayout,
) -> None:
    wids = [int(window_ids[row]) for row in block.rows]
    result = extract(
        model,
        torch.from_numpy(windows.tokens[block.rows]),
        method=config.method,
        layers_per_pass=config.layers_per_pass,
        sample=sample_request(config, wids),
    )
    n_keys = result.n_keys.numpy()
    for i, wid in enumerate(wids):
        extras = {name: value[i].numpy() for name, value in result.extras.items()}
        record = window_record(
            result.qnorm[i].numpy(), result.entropy[i].numpy(), n_keys, config, wid, extras
        )
        store.write_shard(layout, label, wid, **record)


def slice_rows(n_windows: int, n_slices: int) -> np.ndarray:
    """The windows whose attention is kept: spread from the first to the last."""
    return np.unique(np.linspace(0, n_windows - 1, min(n_slices, n_windows)).round().astype(int))


@torch.inference_mode()
def attention_slice(
    model: Any, tokens: np.ndarray, start: int, length: int
) -> dict[str, np.ndarray]:
    """Every head's attention among `length` tokens from `start` of one window (the keys before
    the slice are not shown), with those queries' ‖q‖ and full-context H, from one forward."""
    spec = models.spec_of(model)
    end = start + length
    kept: dict[str, list] = {"pattern": [], "qnorm": [], "entropy": []}

    def on_q(q: torch.Tensor, hook: Any) -> None:
        kept["qnorm"].append(query_norm(q)[0, :, start:end].cpu())

    def on_pattern(pattern: torch.Tensor, hook: Any) -> None:
        rows = pattern[0, :, start:end]
        kept["pattern"].append(rows[..., start:end].half().cpu())
        kept["entropy"].append(attention_entropy(rows[None], block=length)[0].cpu())

    fwd_hooks = []
    for layer in range(spec.n_layers):
        fwd_hooks.append((hooks.attn_hook(spec.q_hook, layer), on_q))
        fwd_hooks.append((hooks.attn_hook("pattern", layer), on_pattern))
    window = torch.from_numpy(tokens[:end])[None].to(model.cfg.device)
    model.run_with_hooks(
        window, fwd_hooks=fwd_hooks, stop_at_layer=spec.n_layers, return_type=None,
        output_attentions=False,
    )  # fmt: skip
    return {name: torch.stack(values).numpy() for name, values in kept.items()}


def attention_sample(
    model: Any, windows: Windows, tokenizer: Any, config: SweepConfig
) -> dict[str, np.ndarray]:
    """A few slices of attention from windows spread over the run, from their middles."""
    length = min(config.attention_tokens, windows.ctx)
    start = (windows.ctx - length) // 2
    rows = slice_rows(len(windows), config.attention_slices)
    slices = [attention_slice(model, windows.tokens[row], start, length) for row in rows]
    texts = [
        [tokenizer.decode([t]) for t in windows.tokens[row][start : start + length]] for row in rows
    ]
    return {
        "window_ids": windows.meta["window_id"].to_numpy()[rows],
        "starts": np.full(len(rows), start),
        "token_strs": np.array(texts),
        **{name: np.stack([s[name] for s in slices]) for name in ("pattern", "qnorm", "entropy")},
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


def prepare_windows(
    config: SweepConfig, layout: SweepLayout, tokenizer: Any, dist: Dist
) -> Windows:
    """The run's windows: read back from the folder on resume, else built and written once."""
    bos = added_bos_id(tokenizer) is not None
    stored = store.read_windows(layout.tokens, layout.meta, bos)
    if stored is not None:
        return stored
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
        store.write_windows(layout.tokens, layout.meta, windows)
    return windows


def check_context(config: SweepConfig, hf_config: Any) -> None:
    """ctx beyond the model's positions is an error before any weights are loaded."""
    limit = getattr(hf_config, "max_position_embeddings", None) or getattr(
        hf_config, "n_positions", None
    )
    if limit and config.ctx > limit:
        raise SpectraError(f"--ctx {config.ctx} exceeds the {limit} positions of {config.model}.")


def estimate_bytes(config: SweepConfig, n_layers: int, n_heads: int) -> int:
    """Disk the run will write: tokens, shards (stats + sample) for both models, a margin."""
    n = config.max_windows or 64
    per_window = n_layers * n_heads * (N_MOMENTS * 8 + config.sample_per_window * 8)
    return int(n * (config.ctx * 8 + 2 * per_window) + 64 * 2**20)


def run_sweep(config: SweepConfig, *, log: Log = print) -> Path:
    """Run (or resume, or join) the sweep of `config`; returns the results folder."""
    return run_distributed(config, lambda dist: _run(config, dist, log))


def _run(config: SweepConfig, dist: Dist, log: Log) -> Path:
    layout = SweepLayout(config.out_dir)
    device = models.pick_device(dist.device_for(config.device))
    dtype = models.pick_dtype(config.dtype, device)
    hf_config = models.load_config(config.model)
    models.check_measurable(hf_config)
    check_context(config, hf_config)
    if dist.rank == 0:
        store.check_writable(
            layout.root,
            estimate_bytes(config, hf_config.num_hidden_layers, hf_config.num_attention_heads),
        )
        if store.prepare_folder(layout, config.identity(), config.overwrite):
            n_done = len(layout.done_windows("trained"))
            log(f"Resuming {layout.root}: {n_done} windows already done.")
        else:
            store.write_json(layout.config, _config_record(config, dist))
    dist.barrier()
    tokenizer = models.load_tokenizer(config.model)
    windows = prepare_windows(config, layout, tokenizer, dist)
    dist.barrier()
    timings = {}
    for label, source, seed in model_passes(config):
        device_map = config.device_map if label == "trained" else None
        random_norms = label == "random_init" and config.random_init_norms
        model = models.load_model(
            source, device=str(device), dtype=dtype, seed=seed, device_map=device_map,
            random_norms=random_norms,
        )  # fmt: skip
        models.check_masks(model, torch.from_numpy(windows.tokens[0]))
        if label == "trained" and dist.rank == 0:
            record = _config_record(config, dist, device, dtype, windows, model)
            store.write_json(layout.config, record)
        timings[label] = run_model_pass(model, label, windows, config, layout, dist, log)
        if label == "trained" and dist.rank == 0:
            slices = attention_sample(model, windows, tokenizer, config)
            store.write_npz(layout.attention, **slices)
        del model
        release_memory(device)
    dist.barrier()
    if not dist.on_one_host():
        labels = [label for label, _, _ in model_passes(config)]
        window_ids = windows.meta["window_id"].to_numpy()
        dist.collect_files(
            layout.root, own_shards(window_ids, labels, config.batch_size, layout, dist)
        )
    if dist.rank == 0:
        finalize(layout, config, timings, log)
    return layout.root


def _config_record(
    config: SweepConfig,
    dist: Dist,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    windows: Windows | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """config.json: the identity first (what a resume checks), then what is known so far."""
    record = run_record(SCHEMA_VERSION, config, dist, device, dtype)
    if windows is not None:
        record["n_windows"] = int(len(windows.tokens))
        record["bos"] = bool(windows.bos)
    if model is not None:
        record["q_source"] = q_source(model, config.method)
        record["attention"] = models.spec_of(model).describe()
    return record


def run_record(
    schema_version: int,
    config: Any,
    dist: Dist,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The head of every config.json (sweep or Phase 2): the schema, the identity first (what a
    resume checks), the settings, the world size, and the environment once it is known."""
    record: dict[str, Any] = {
        "schema_version": schema_version,
        "identity": config.identity(),
        "config": config.to_dict(),
        "world_size": dist.world_size,
    }
    if device is not None and dtype is not None:
        record["environment"] = environment(device, dtype)
    return record


def own_shards(
    window_ids: np.ndarray, labels: list[str], batch_size: int, layout: Any, dist: Dist
) -> list[str]:
    """This rank's shard files of the stages `labels`, relative to the results folder (what
    ranks on other machines send to rank 0)."""
    mine = rank_blocks(len(window_ids), batch_size, dist)
    return [
        layout.relative_shard(label, int(window_ids[row]))
        for label in labels
        for block in mine
        for row in block.rows
    ]


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def finalize(layout: SweepLayout, config: SweepConfig, timings: dict[str, Any], log: Log) -> None:
    """Merge the shards into head_stats.csv, summary.json, the token sample, the alpha-response
    and the report."""
    meta = pd.read_csv(layout.meta)
    window_ids = meta["window_id"].to_numpy()
    trained = load_shards(layout, "trained", window_ids)
    random_init = None
    if "random-init" in config.controls:
        random_init = load_shards(layout, "random_init", window_ids)
    clusters = Clusters.of(meta)
    flagged = degenerate_heads(layout, trained, random_init)
    table = head_table(
        trained.stats,
        trained.frame,
        None if random_init is None else random_init.stats,
        clusters=clusters,
        sample_arrays=trained.arrays,
        n_boot=config.n_boot,
        seed=config.seed,
        criteria=config.criteria,
        degenerate=flagged.trained,
        random_init_degenerate=flagged.random_init,
    )
    summary = verdict(table, config.criteria, control=flagged.control)
    summary["run"] = {
        "model": config.model,
        "corpus": config.corpus,
        "ctx": config.ctx,
        "n_windows": int(len(window_ids)),
        "n_documents": int(len(meta[["source", "doc_id"]].drop_duplicates())),
        "cluster_unit": clusters.unit,
        "n_clusters": clusters.n,
        "skip_first": config.skip_first,
        "controls": list(config.controls),
        "seed": config.seed,
        "timings": timings,
    }
    store.write_csv(layout.head_stats, table)
    store.write_json(layout.summary, summary)
    store.write_csv(layout.alpha_response, alpha_response(trained.arrays, config.q_scales))
    frames = [trained.frame] + ([] if random_init is None else [random_init.frame])
    store.write_parquet(layout.token_sample, pd.concat(frames, ignore_index=True))
    log(verdict_text(summary))
    log(strongest_heads(table).to_string(index=False))
    if config.report:
        from spectra_interp.viz.report import build_report

        log(f"Report: {build_report(layout.root)}")
    log(f"Results: {layout.root}")


@dataclass(frozen=True)
class Flagged:
    """Degenerate heads of both models ([layer, head] reasons) and the control's usability."""

    trained: np.ndarray
    random_init: np.ndarray | None
    control: dict | None


def degenerate_heads(layout: SweepLayout, trained: Any, random_init: Any) -> Flagged:
    """`stats.degenerate` on each model's token sample, at the dtype the run used."""
    dtype = store.read_json(layout.config).get("environment", {}).get("dtype", "float32")
    reasons = degenerate_reasons(trained.arrays.qnorm, trained.arrays.entropy, dtype)
    if random_init is None:
        return Flagged(reasons, None, None)
    control = degenerate_reasons(random_init.arrays.qnorm, random_init.arrays.entropy, dtype)
    return Flagged(reasons, control, control_usability(random_init.arrays.qnorm, dtype))


def strongest_heads(table: pd.DataFrame, n: int = STRONGEST_SHOWN) -> pd.DataFrame:
    """The heads with the largest |r|, as a short printable table."""
    columns = ["layer", "head", "pearson_r", "ci_low", "ci_high", "partial_r_position", "q_fdr"]
    top = table.reindex(table["pearson_r"].abs().sort_values(ascending=False).index).head(n)
    return top[columns + ["passes"]].round(3)
