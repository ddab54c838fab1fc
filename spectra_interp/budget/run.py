"""The Phase 2 run: split -> dense passes -> plan -> masked passes (resumable shards) -> verdict.

Stages, each a set of per-window shards computed in fixed blocks of `batch_size` windows (so a
resumed, shared or distributed run computes every window in the same batch as an uninterrupted
one), claimed block by block and dealt to torchrun ranks as the sweep deals them:

1. `calibration`: a dense pass of each calibration window (`passes`);
2. `evaluation`: a dense pass of each evaluation window;
3. the plan (rank 0, once, `plan.json`): each arm's cells and allocation per budget (`plan`);
4. `masked`: every arm and budget on each evaluation window.

Rank 0 then merges the masked shards into the curves, the per-head table and the verdict
(`curves`) and builds the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spectra_interp import models
from spectra_interp.budget import arms, mask
from spectra_interp.budget import verdict as vd
from spectra_interp.budget.allocate import FRACTIONS
from spectra_interp.budget.curves import (
    Masked,
    allocation_table,
    budget_report,
    combos,
    curve_table,
    per_head_table,
    source_table,
    verdicts,
)
from spectra_interp.budget.data import document_names, prepare_splits
from spectra_interp.budget.passes import (
    MASKED_FIELDS,
    calibration_block,
    evaluation_block,
    masked_block,
)
from spectra_interp.budget.plan import Geometry, Plan, make_plan, read_plan, write_plan
from spectra_interp.config import BudgetConfig
from spectra_interp.corpus import Windows
from spectra_interp.distributed import Dist, run_distributed
from spectra_interp.errors import SpectraError
from spectra_interp.models.architecture import layer_windows
from spectra_interp.results import store
from spectra_interp.results.layout import BUDGET_SCHEMA_VERSION, BudgetLayout
from spectra_interp.stats.clusters import DOCUMENT, Clusters
from spectra_interp.sweep import (
    Block,
    Log,
    check_context,
    own_shards,
    release_memory,
    run_blocks,
    run_record,
)

CAL, EVAL, MASKED = BudgetLayout.CALIBRATION, BudgetLayout.EVALUATION, BudgetLayout.MASKED
QUESTION = (
    "Can ‖q‖ set each query's key budget better than its head and position can, at matched mean "
    "budgets (next-token KL against the dense model)?"
)


def estimate_bytes(config: BudgetConfig, n_layers: int, n_heads: int) -> int:
    """Disk the run will write: the shards of the three stages and a margin."""
    queries = n_layers * n_heads * config.ctx
    n_cal, n_eval = config.calibration_windows or 64, config.max_windows or 64
    n_combos = len(combos(config.budgets))
    masked = n_combos * (config.ctx * 9 + n_layers * n_heads * 16)
    evaluation = queries * 8 + n_layers * n_heads * len(arms.ORACLE_GRID) * 16
    calibration = queries * (8 + 2 * len(FRACTIONS))
    return int(n_cal * calibration + n_eval * (evaluation + masked) + 64 * 2**20)


# --- the run ---------------------------------------------------------------------------------


def run_budget(config: BudgetConfig, *, log: Log = print) -> Path:
    """Run (or resume, or join) the Phase 2 experiment of `config`; returns the results folder."""
    return run_distributed(config, lambda dist: _run(config, dist, log))


Compute = Callable[[torch.Tensor, list[int]], list[dict[str, np.ndarray]]]


def _stage(
    stage: str,
    windows: Windows,
    config: BudgetConfig,
    layout: BudgetLayout,
    dist: Dist,
    log: Log,
    compute: Compute,
    device: torch.device,
) -> dict[str, float]:
    """One stage over this rank's blocks (claimed, resumable; see `sweep.run_blocks`):
    `compute(tokens, window_ids)` gives each window's shard."""
    window_ids = windows.meta["window_id"].to_numpy()

    def block_shards(block: Block) -> int:
        ids = [int(window_ids[row]) for row in block.rows]
        tokens = torch.from_numpy(windows.tokens[block.rows]).to(device)
        for wid, record in zip(ids, compute(tokens, ids), strict=True):
            store.write_shard(layout, stage, wid, **record)
        return int(windows.tokens[block.rows].size)

    return run_blocks(
        stage, window_ids, config.batch_size, layout, dist, block_shards, config.progress, log
    )


def _run(config: BudgetConfig, dist: Dist, log: Log) -> Path:
    layout = BudgetLayout(config.out_dir)
    device = models.pick_device(dist.device_for(config.device))
    dtype = models.pick_dtype(config.dtype, device)
    hf_config = models.load_config(config.model)
    models.check_measurable(hf_config)
    check_context(config, hf_config)
    geometry = Geometry(layer_windows(hf_config, hf_config.num_hidden_layers), config)
    arms.check_budgets(config.budgets, geometry.floor, config.sink, config.recent)
    if dist.rank == 0:
        heads = hf_config.num_attention_heads
        store.check_writable(
            layout.root, estimate_bytes(config, hf_config.num_hidden_layers, heads)
        )
        if store.prepare_folder(layout, config.identity(), config.overwrite):
            log(f"Resuming {layout.root}: {len(layout.done_windows(MASKED))} windows already done.")
        else:
            store.write_json(layout.config, _config_record(config, dist))
    dist.barrier()
    tokenizer = models.load_tokenizer(config.model)
    splits = prepare_splits(config, layout, tokenizer, write=dist.rank == 0)
    dist.barrier()
    model = models.load_model(
        config.model, device=str(device), dtype=dtype, seed=config.seed,
        device_map=config.device_map,
    )  # fmt: skip
    models.check_masks(model, torch.from_numpy(next(iter(splits.values())).tokens[0]))
    if dist.rank == 0:
        store.write_json(layout.config, _config_record(config, dist, device, dtype, splits, model))
    start = time.perf_counter()
    where = torch.device(model.cfg.device)  # the input's device (the first, with --device-map)
    plan, timings = _stages(model, config, layout, dist, splits, geometry, where, log)
    timings["total_seconds"] = round(time.perf_counter() - start, 1)
    del model
    release_memory(device)
    dist.barrier()
    _share_stage(dist, layout, splits, config, (MASKED,))
    if dist.rank == 0:
        finalize(layout, config, splits, plan, timings, log)
    return layout.root


def _stages(
    model: Any,
    config: BudgetConfig,
    layout: BudgetLayout,
    dist: Dist,
    splits: dict[str, Windows],
    geometry: Geometry,
    device: torch.device,
    log: Log,
) -> tuple[Plan, dict[str, Any]]:
    """The dense stages, the plan, the masked stage: returns the plan and the timings."""

    def calibration(tokens: torch.Tensor, ids: list[int]) -> list[dict]:
        return calibration_block(model, tokens, ids, geometry, config)

    def evaluation(tokens: torch.Tensor, ids: list[int]) -> list[dict]:
        return evaluation_block(model, tokens, config)

    def masked(tokens: torch.Tensor, ids: list[int]) -> list[dict]:
        return masked_block(model, tokens, ids, plan, layout, geometry, config)

    timings = {
        CAL: _stage(CAL, splits[CAL], config, layout, dist, log, calibration, device),
        EVAL: _stage(EVAL, splits[EVAL], config, layout, dist, log, evaluation, device),
    }
    dist.barrier()
    _share_stage(dist, layout, splits, config, (CAL, EVAL))
    if dist.rank == 0 and not layout.plan.exists():
        started = time.perf_counter()
        write_plan(layout, make_plan(config, layout, splits, geometry))
        timings["plan"] = {"seconds": round(time.perf_counter() - started, 1)}
    dist.barrier()
    _share_files(dist, layout, [layout.PLAN])
    plan = read_plan(layout)
    timings[MASKED] = _stage(MASKED, splits[EVAL], config, layout, dist, log, masked, device)
    return plan, timings


def _share_stage(
    dist: Dist,
    layout: BudgetLayout,
    splits: dict[str, Windows],
    config: BudgetConfig,
    stages: tuple,
) -> None:
    """Ranks on other machines send their shards of `stages` to rank 0."""
    if dist.on_one_host():
        return
    mine = []
    for stage in stages:
        ids = splits[CAL if stage == CAL else EVAL].meta["window_id"].to_numpy()
        mine += own_shards(ids, [stage], config.batch_size, layout, dist)
    dist.collect_files(layout.root, mine)


def _share_files(dist: Dist, layout: BudgetLayout, names: list[str]) -> None:
    """Rank 0's copies of `names` to every rank on another machine."""
    if dist.on_one_host():
        return
    import torch.distributed as torch_dist

    payload = [{n: layout.path(n).read_bytes() for n in names} if dist.rank == 0 else None]
    torch_dist.broadcast_object_list(payload, src=0)
    if dist.rank != 0:
        for name, data in payload[0].items():
            store.write_bytes_atomic(layout.path(name), data)


def _config_record(
    config: BudgetConfig,
    dist: Dist,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    splits: dict[str, Windows] | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """config.json: the identity first (what a resume checks), then what is known so far."""
    record = {**run_record(BUDGET_SCHEMA_VERSION, config, dist, device, dtype), "phase": 2}
    if splits is not None:
        record["n_windows"] = {s: len(w) for s, w in splits.items()}
        record["documents"] = {
            s: sorted(document_names(w.meta).unique().tolist()) for s, w in splits.items()
        }
    if model is not None:
        record["attention"] = models.spec_of(model).describe()
        record["kernel"] = (
            f"{mask.NAME}: fp32 scores, soft cap before selection, exact top-k per query, "
            f"blocks of {mask.QUERY_BLOCK} queries"
        )
    return record


# --- the merge -------------------------------------------------------------------------------


def load_masked(layout: BudgetLayout, window_ids: np.ndarray, n_queries: int) -> Masked:
    missing = sorted(set(window_ids.tolist()) - layout.done_windows(MASKED))
    if missing:
        raise SpectraError(
            f"{layout.root}: {len(missing)} evaluation windows have no masked shard (e.g. "
            f"{missing[0]})."
        )
    shards = [store.read_shard(layout, MASKED, int(w)) for w in window_ids]
    return Masked(
        **{k: np.stack([s[k] for s in shards]) for k in MASKED_FIELDS},
        n_queries=n_queries,
        n_kv_heads=int(shards[0]["n_kv_heads"]),
    )


def finalize(
    layout: BudgetLayout,
    config: BudgetConfig,
    splits: dict[str, Windows],
    plan: Plan,
    timings: dict[str, Any],
    log: Log,
) -> None:
    """Merge the masked shards into budget_curves.csv, per_head.csv, allocation.csv,
    summary.json and the report."""
    meta = splits[EVAL].meta
    clusters = Clusters(pd.factorize(document_names(meta))[0].astype(np.int64), DOCUMENT)
    budgets = plan.budgets
    masked = load_masked(layout, meta["window_id"].to_numpy(), config.ctx - config.skip_first)
    curves = curve_table(
        masked, budgets, clusters, plan.transfer_budget, n_boot=config.n_boot, seed=config.seed
    )
    per_budget = verdicts(
        masked, budgets, clusters, alpha=config.alpha, margin=config.margin, n_boot=config.n_boot,
        seed=config.seed,
    )  # fmt: skip
    level = 1 - 2 * config.alpha
    summary = vd.Summary(
        question=QUESTION,
        verdict=vd.sentence(per_budget, clusters.n, config.margin, level),
        margin=config.margin,
        alpha=config.alpha,
        ci_level=level,
        n_documents=clusters.n,
        budgets=per_budget,
        budgets_met=budget_report(curves, plan.planned, budgets),
        by_source=source_table(masked, budgets, meta["source"].astype(str)),
        run=_run_facts(config, splits, clusters, plan, timings),
    )
    n_layers, n_heads = masked.kept.shape[2:]
    store.write_csv(layout.curves, curves)
    store.write_csv(layout.per_head, per_head_table(masked, budgets))
    store.write_csv(layout.allocation, allocation_table(plan, n_layers, n_heads))
    store.write_json(layout.summary, summary.to_json())
    log(curves.round(4).to_string(index=False))
    log(f"Verdict: {summary.verdict}")
    met = summary.budgets_met
    if not met["met"]:
        worst, tolerance = met["worst_abs_error"], met["tolerance"]
        log(f"Warning: an arm missed its budget by {worst:.3f} (tolerance {tolerance}).")
    if config.report:
        from spectra_interp.viz.budget_report import build_budget_report

        log(f"Report: {build_budget_report(layout.root)}")
    log(f"Results: {layout.root}")


def _run_facts(
    config: BudgetConfig,
    splits: dict[str, Windows],
    clusters: Clusters,
    plan: Plan,
    timings: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": config.model,
        "corpus": config.corpus,
        "ctx": config.ctx,
        "loss": config.loss,
        "position_cells": plan.position_cells,
        "feature_cells": plan.feature_cells,
        "evaluated_positions": f"{config.skip_first}..{config.ctx - 2}",
        "n_windows": {s: len(w) for s, w in splits.items()},
        "n_documents": {s: int(document_names(w.meta).nunique()) for s, w in splits.items()},
        "cluster_unit": clusters.unit,
        "sink": config.sink,
        "recent": config.recent,
        "always_kept_floor": plan.always_kept_floor,
        "top_p_mass": {
            a: dict(zip(map(str, plan.budgets), m, strict=True)) for a, m in plan.top_p_mass.items()
        },
        "lambda": {a: list(p.lam) for a, p in plan.fitted.items()},
        "lambda_calibration": {a: list(p.lam_calibration) for a, p in plan.fitted.items()},
        "seed": config.seed,
        "timings": timings,
    }
