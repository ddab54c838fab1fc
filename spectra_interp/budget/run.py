"""The Phase 2 run: split -> dense passes -> plan -> masked passes (resumable shards) -> verdict.

Stages, each a set of per-window shards computed in fixed blocks of `batch_size` windows (so a
resumed, shared or distributed run computes every window in the same batch as an uninterrupted
one), claimed block by block and dealt to torchrun ranks as the sweep deals them:

1. `calibration`: a dense pass of each calibration window (`passes`);
2. `evaluation`: a dense pass of each evaluation window;
3. the plan (rank 0, once, `plan.json`): each arm's cells and allocation per budget (`plan`);
4. `masked`: every arm and budget on each evaluation window.

Rank 0 then merges the masked shards into the curves, the per-head table and the verdict
(`curves`); the command line builds the report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from spectra_interp.errors import SpectraError
from spectra_interp.models.architecture import layer_windows
from spectra_interp.results import store
from spectra_interp.results.layout import BUDGET_SCHEMA_VERSION, BudgetLayout
from spectra_interp.runner import Log, Run, Stage, release_memory, run_experiment, run_record
from spectra_interp.stats.clusters import DOCUMENT, Clusters

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
    return run_experiment(Budget(config), log=log)


@dataclass
class Budget:
    """Phase 2 as an experiment: dense stages of the calibration and evaluation windows, the
    plan (rank 0, once, `plan.json`), the masked stage of every arm and budget, the merge."""

    config: BudgetConfig
    layout: BudgetLayout = field(init=False)
    resume_stage: str = MASKED
    geometry: Geometry | None = None
    splits: dict[str, Windows] = field(default_factory=dict)
    plan: Plan | None = None

    def __post_init__(self) -> None:
        self.layout = BudgetLayout(self.config.out_dir)

    def disk_bytes(self, hf_config: Any) -> int:
        config = self.config
        self.geometry = Geometry(layer_windows(hf_config, hf_config.num_hidden_layers), config)
        arms.check_budgets(config.budgets, self.geometry.floor, config.sink, config.recent)
        heads = hf_config.num_attention_heads
        return estimate_bytes(config, hf_config.num_hidden_layers, heads)

    def record(self, run: Run, model: Any = None) -> dict[str, Any]:
        if model is None:
            return config_record(self.config, run.dist)
        return config_record(self.config, run.dist, run.device, run.dtype, self.splits, model)

    def prepare(self, run: Run, tokenizer: Any) -> None:
        self.splits = prepare_splits(self.config, self.layout, tokenizer, write=run.main)

    def stages(self, run: Run) -> Iterator[Stage]:
        config, layout, geometry = self.config, self.layout, self.geometry
        assert geometry is not None, "disk_bytes() reads the geometry before the stages"
        first = next(iter(self.splits.values()))
        model = run.load_model(config.model, config.seed, first, config.device_map)
        if run.main:
            store.write_json(layout.config, self.record(run, model))
        start = time.perf_counter()
        where = torch.device(model.cfg.device)  # the input's device (the first, with --device-map)

        def calibration(tokens: torch.Tensor, ids: list[int], model: Any = model) -> list[dict]:
            return calibration_block(model, tokens.to(where), ids, geometry, config)

        def evaluation(tokens: torch.Tensor, ids: list[int], model: Any = model) -> list[dict]:
            return evaluation_block(model, tokens.to(where), config)

        def masked(tokens: torch.Tensor, ids: list[int], model: Any = model) -> list[dict]:
            assert self.plan is not None, "the plan is read before the masked stage"
            return masked_block(model, tokens.to(where), ids, self.plan, layout, geometry, config)

        yield Stage(CAL, self.splits[CAL], calibration)
        yield Stage(EVAL, self.splits[EVAL], evaluation)
        if run.main and not layout.plan.exists():
            started = time.perf_counter()
            write_plan(layout, make_plan(config, layout, self.splits, geometry))
            run.timings["plan"] = {"seconds": round(time.perf_counter() - started, 1)}
        run.dist.barrier()
        run.share_files([layout.PLAN])
        self.plan = read_plan(layout)
        yield Stage(MASKED, self.splits[EVAL], masked)
        run.timings["total_seconds"] = round(time.perf_counter() - start, 1)
        del model, calibration, evaluation, masked
        release_memory(run.device)

    def merge(self, run: Run) -> vd.Summary:
        assert self.plan is not None, "the stages read the plan before the merge"
        return finalize(self.layout, self.config, self.splits, self.plan, run.timings, run.log)


def config_record(
    config: BudgetConfig,
    dist: Any,
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
) -> vd.Summary:
    """Merge the masked shards into budget_curves.csv, per_head.csv and allocation.csv; returns
    the summary (the engine writes it as summary.json)."""
    meta = splits[EVAL].meta
    clusters = Clusters(pd.factorize(document_names(meta))[0].astype(np.int64), DOCUMENT)
    budgets = plan.budgets
    masked = load_masked(layout, meta["window_id"].to_numpy(), config.ctx - config.skip_first)
    curves = curve_table(
        masked, budgets, clusters, plan.transfer_budget, n_boot=config.n_boot, seed=config.seed
    )
    inference = {
        "alpha": config.alpha, "margin": config.margin, "n_boot": config.n_boot,
        "seed": config.seed,
    }  # fmt: skip
    per_budget = verdicts(masked, budgets, clusters, **inference)
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
        by_source=source_table(masked, budgets, meta["source"].astype(str), clusters, **inference),
        run=_run_facts(config, splits, clusters, plan, timings),
    )
    n_layers, n_heads = masked.kept.shape[2:]
    store.write_csv(layout.curves, curves)
    store.write_csv(layout.per_head, per_head_table(masked, budgets))
    store.write_csv(layout.allocation, allocation_table(plan, n_layers, n_heads))
    log(curves.round(4).to_string(index=False))
    log(f"Verdict: {summary.verdict}")
    for row in summary.by_source:
        ratio = vd.Interval(row["ratio"], row["ratio_low"], row["ratio_high"])
        log(
            f"  {row['source']} ({row['n_documents']} documents) at budget {row['budget']:g}: "
            f"{row['call']} (KL ratio {ratio.text()})"
        )
    met = summary.budgets_met
    if not met["met"]:
        worst, tolerance = met["worst_abs_error"], met["tolerance"]
        log(f"Warning: an arm missed its budget by {worst:.3f} (tolerance {tolerance}).")
    return summary


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
