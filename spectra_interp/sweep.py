"""Phase 1 on the experiment engine: corpus -> windows -> per-window statistics of the trained
model and of its random-init control (resumable shards, `runner`) -> head table and verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spectra_interp import models
from spectra_interp.config import SweepConfig
from spectra_interp.corpus import Windows, load_corpus
from spectra_interp.distributed import Dist
from spectra_interp.extract import SampleRequest, extract, q_source
from spectra_interp.extract.slices import attention_slice
from spectra_interp.results import store
from spectra_interp.results.layout import SCHEMA_VERSION, SweepLayout
from spectra_interp.results.load import load_shards, shard_record
from spectra_interp.runner import Log, Run, Stage, release_memory, run_experiment, run_record
from spectra_interp.runner.windows import stored_or_built
from spectra_interp.stats.beyond import alpha_response
from spectra_interp.stats.clusters import Clusters
from spectra_interp.stats.degenerate import control_usability, degenerate_reasons
from spectra_interp.stats.moments import N_MOMENTS, Moments
from spectra_interp.stats.sample import sample_positions, token_sample
from spectra_interp.stats.table import head_table
from spectra_interp.stats.verdict import RunFacts, Verdict, verdict

STRONGEST_SHOWN = 10


def control_source(config: SweepConfig) -> tuple[str, int]:
    """The random-init control: the same architecture with fresh weights (another seed if the
    studied model is itself random)."""
    name = config.model.removeprefix("random:")
    return f"random:{name}", config.seed + (1 if config.model.startswith("random:") else 0)


TRAINED, RANDOM_INIT = "trained", "random_init"
WINDOWS = "windows"  # the sweep's one set of windows


def model_stages(config: SweepConfig) -> Iterator[tuple[str, str, int]]:
    """(stage, model source, seed) of each model the sweep runs: the trained model, then its
    random-init control when `--controls` asks for it."""
    yield TRAINED, config.model, config.seed
    if "random-init" in config.controls:
        source, seed = control_source(config)
        yield RANDOM_INIT, source, seed


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


def block_records(
    model: Any, config: SweepConfig, tokens: torch.Tensor, wids: list[int]
) -> list[dict[str, np.ndarray]]:
    """The shards of one block of windows from one extraction pass."""
    result = extract(
        model,
        tokens,
        method=config.method,
        layers_per_pass=config.layers_per_pass,
        sample=sample_request(config, wids),
    )
    n_keys = result.n_keys.numpy()
    records = []
    for i, wid in enumerate(wids):
        extras = {name: value[i].numpy() for name, value in result.extras.items()}
        records.append(
            window_record(
                result.qnorm[i].numpy(), result.entropy[i].numpy(), n_keys, config, wid, extras
            )
        )
    return records


def slice_rows(n_windows: int, n_slices: int) -> np.ndarray:
    """The windows whose attention is kept: spread from the first to the last."""
    return np.unique(np.linspace(0, n_windows - 1, min(n_slices, n_windows)).round().astype(int))


def attention_sample(
    model: Any, windows: Windows, tokenizer: Any, config: SweepConfig
) -> dict[str, np.ndarray]:
    """A few slices of attention from windows spread over the run, from their middles."""
    length = min(config.attention_tokens, windows.ctx)
    start = (windows.ctx - length) // 2
    rows = slice_rows(len(windows), config.attention_slices)
    slices = [
        attention_slice(model, torch.from_numpy(windows.tokens[row]), start, length) for row in rows
    ]
    texts = [
        [tokenizer.decode([t]) for t in windows.tokens[row][start : start + length]] for row in rows
    ]
    return {
        "window_ids": windows.meta["window_id"].to_numpy()[rows],
        "starts": np.full(len(rows), start),
        "token_strs": np.array(texts),
        "pattern": torch.stack([s.pattern for s in slices]).half().numpy(),
        "qnorm": torch.stack([s.qnorm for s in slices]).numpy(),
        "entropy": torch.stack([s.entropy for s in slices]).numpy(),
    }


def prepare_windows(
    config: SweepConfig, layout: SweepLayout, tokenizer: Any, write: bool
) -> Windows:
    """The run's windows: read back from the folder on resume, else built (and written once, by
    the process that `write`s)."""

    def build() -> dict[str, Windows]:
        return {
            WINDOWS: load_corpus(
                config.corpus,
                tokenizer,
                config.ctx,
                stride=config.stride,
                max_windows=config.max_windows,
                seed=config.seed,
                pack=config.pack,
            )
        }

    files = {WINDOWS: (layout.tokens, layout.meta)}
    return stored_or_built(files, tokenizer, build, write)[WINDOWS]


def estimate_bytes(config: SweepConfig, n_layers: int, n_heads: int) -> int:
    """Disk the run will write: tokens, shards (stats + sample) for both models, a margin."""
    n = config.max_windows or 64
    per_window = n_layers * n_heads * (N_MOMENTS * 8 + config.sample_per_window * 8)
    return int(n * (config.ctx * 8 + 2 * per_window) + 64 * 2**20)


def config_record(
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


@dataclass
class Sweep:
    """Phase 1 as an experiment: one stage of shards per model (`model_stages`), the attention
    slices after the trained model's stage, and the merge into the head table and verdict."""

    config: SweepConfig
    layout: SweepLayout = field(init=False)
    resume_stage: str = TRAINED
    windows: Windows | None = None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        self.layout = SweepLayout(self.config.out_dir)

    def disk_bytes(self, hf_config: Any) -> int:
        heads = hf_config.num_attention_heads
        return estimate_bytes(self.config, hf_config.num_hidden_layers, heads)

    def record(self, run: Run, model: Any = None) -> dict[str, Any]:
        if model is None:
            return config_record(self.config, run.dist)
        return config_record(self.config, run.dist, run.device, run.dtype, self.windows, model)

    def prepare(self, run: Run, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.windows = prepare_windows(self.config, self.layout, tokenizer, write=run.main)

    def stages(self, run: Run) -> Iterator[Stage]:
        config, windows = self.config, self.windows
        assert windows is not None, "prepare() reads the windows before the stages"
        for stage, source, seed in model_stages(config):
            device_map = config.device_map if stage == TRAINED else None
            random_norms = stage == RANDOM_INIT and config.random_init_norms
            model = run.load_model(source, seed, windows, device_map, random_norms)
            if stage == TRAINED and run.main:
                store.write_json(self.layout.config, self.record(run, model))

            def compute(tokens: torch.Tensor, wids: list[int], model: Any = model) -> list:
                return block_records(model, config, tokens, wids)

            yield Stage(stage, windows, compute)
            if stage == TRAINED and run.main:
                slices = attention_sample(model, windows, self.tokenizer, config)
                store.write_npz(self.layout.attention, **slices)
            del model, compute
            release_memory(run.device)

    def merge(self, run: Run) -> Verdict:
        return finalize(self.layout, self.config, run.timings, run.log)


def run_sweep(config: SweepConfig, *, log: Log = print) -> Path:
    """Run (or resume, or join) the sweep of `config`; returns the results folder."""
    return run_experiment(Sweep(config), log=log)


def finalize(
    layout: SweepLayout, config: SweepConfig, timings: dict[str, Any], log: Log
) -> Verdict:
    """Merge the shards into head_stats.csv, the token sample and the alpha-response; returns
    the verdict (the engine writes it as summary.json)."""
    meta = pd.read_csv(layout.meta)
    window_ids = meta["window_id"].to_numpy()
    trained = load_shards(layout, TRAINED, window_ids)
    random_init = None
    if "random-init" in config.controls:
        random_init = load_shards(layout, RANDOM_INIT, window_ids)
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
    facts = RunFacts(
        model=config.model,
        corpus=config.corpus,
        ctx=config.ctx,
        n_windows=int(len(window_ids)),
        n_documents=int(len(meta[["source", "doc_id"]].drop_duplicates())),
        cluster_unit=clusters.unit,
        n_clusters=clusters.n,
        skip_first=config.skip_first,
        controls=list(config.controls),
        seed=config.seed,
        timings=timings,
    )
    summary = verdict(table, config.criteria, run=facts, control=flagged.control)
    store.write_csv(layout.head_stats, table)
    store.write_csv(layout.alpha_response, alpha_response(trained.arrays, config.q_scales))
    frames = [trained.frame] + ([] if random_init is None else [random_init.frame])
    store.write_parquet(layout.token_sample, pd.concat(frames, ignore_index=True))
    log(summary.text())
    log(strongest_heads(table).to_string(index=False))
    return summary


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
