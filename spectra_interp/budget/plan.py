"""The plan between the dense and the masked passes: the rules fitted on the calibration shards,
each arm's scale per budget solved on the evaluation shards, and from them the number of keys
every query of an evaluation window keeps, per arm and budget.

The plan and the masked stage read a window's inputs the same way (`window_inputs`), so the
masked passes meet exactly the budgets the plan set.
"""

from __future__ import annotations

import numpy as np
import torch

from spectra_interp.budget import arms
from spectra_interp.budget.rules import (
    Rules,
    design_sums,
    log_qnorm,
    position_bins,
    predict,
    rules_from_sums,
    shuffle_within_bins,
)
from spectra_interp.config import BudgetConfig
from spectra_interp.corpus import Windows
from spectra_interp.metrics import keys_seen
from spectra_interp.results import store
from spectra_interp.results.layout import BudgetLayout

CAL, EVAL = BudgetLayout.CALIBRATION, BudgetLayout.EVALUATION


class Geometry:
    """Keys visible and the fewest kept per (layer, position), and the evaluated positions."""

    def __init__(self, windows: tuple[int | None, ...], config: BudgetConfig) -> None:
        self.visible = torch.stack([keys_seen(config.ctx, w) for w in windows])
        self.fewest = arms.fewest_keys(self.visible, config.sink, config.recent)
        self.first = config.skip_first
        self.floor = arms.floor_budget(self.visible, self.fewest, self.first)

    @property
    def log_n(self) -> np.ndarray:
        """log(keys visible) at the evaluated positions, [layer, pos]."""
        return np.log(self.visible[:, self.first :].double().numpy())


def reference_budget(budgets: tuple[float, ...]) -> float:
    """The budget at which the qnorm arm's ‖q‖ is also read in its masked pass (the middle one)."""
    ordered = sorted(budgets)
    return float(ordered[len(ordered) // 2])


def calibration_masses(config: BudgetConfig) -> tuple[float, ...]:
    """The masses at which the calibration queries' k_p is summed: the grid (matched) or one."""
    return arms.ORACLE_GRID if config.fit_mass is None else (config.fit_mass,)


def stacked_shards(
    layout: BudgetLayout, stage: str, window_ids: np.ndarray, name: str
) -> np.ndarray:
    return np.stack([store.read_shard(layout, stage, int(w))[name] for w in window_ids])


def window_inputs(
    qnorm: np.ndarray, window_id: int, geometry: Geometry, config: BudgetConfig
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """One evaluation window's log‖q‖, its shuffled twin and its dither, at the evaluated
    positions, exactly as the plan and the masked stage both use them."""
    first = geometry.first
    log_q = log_qnorm(qnorm[..., first:])
    bins = position_bins(geometry.log_n, config.position_bins)
    shuffled = shuffle_within_bins(log_q, bins, config.seed, window_id)
    u = arms.dither(config.seed, window_id, qnorm.shape)[..., first:]
    return log_q, shuffled, u


def make_plan(
    config: BudgetConfig,
    layout: BudgetLayout,
    splits: dict[str, Windows],
    geometry: Geometry,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Fit the rules on the calibration shards and solve every arm's scale per budget on the
    evaluation shards (the bisection runs on `device`: fast for a large run on a GPU)."""
    first = geometry.first
    cal_ids = splits[CAL].meta["window_id"].to_numpy()
    target = stacked_shards(layout, CAL, cal_ids, "fit_sums").sum(0)
    design = design_sums(
        geometry.log_n, log_qnorm(stacked_shards(layout, CAL, cal_ids, "qnorm")[..., first:])
    )
    masses = calibration_masses(config)
    share = target[..., 0].sum((0, 1)) / (
        len(cal_ids) * target.shape[0] * target.shape[1] * (config.ctx - first)
    )
    chosen = [arms.nearest_mass(share, b) if len(masses) > 1 else 0 for b in sorted(config.budgets)]
    rules = rules_from_sums(design, target, masses, chosen)
    eval_ids = splits[EVAL].meta["window_id"].to_numpy()
    inputs = [
        window_inputs(store.read_shard(layout, EVAL, int(w))["qnorm"], int(w), geometry, config)
        for w in eval_ids
    ]
    log_q = np.stack([i[0] for i in inputs])
    shuffled = np.stack([i[1] for i in inputs])
    u = torch.stack([i[2] for i in inputs]).to(device)
    oracle = stacked_shards(layout, EVAL, eval_ids, "oracle_share")
    n_queries = oracle.shape[0] * oracle.shape[1] * oracle.shape[2] * (config.ctx - first)
    grid_fraction = oracle.sum(axis=(0, 1, 2)) / n_queries
    budgets = sorted(config.budgets)
    log_scale = np.full((len(arms.ARMS), len(budgets)), np.nan)
    planned = np.zeros_like(log_scale)
    oracle_mass = np.zeros(len(budgets))
    fewest, visible = geometry.fewest[:, first:].to(device), geometry.visible[:, first:].to(device)
    for a, arm in enumerate(arms.ARMS):
        if arm == arms.BOUND:
            for j, b in enumerate(budgets):
                oracle_mass[j], planned[a, j] = arms.oracle_mass(grid_fraction, b)
            continue
        features = shuffled if arm == arms.CONTROL else log_q
        for j, b in enumerate(budgets):
            pred = torch.from_numpy(predict(arm, rules, geometry.log_n, features, j)).to(device)
            log_scale[a, j], planned[a, j] = arms.solve_log_scale(pred, u, fewest, visible, b)
    return {
        "budgets": np.array(budgets),
        "log_scale": log_scale,
        "planned": planned,
        "oracle_mass": oracle_mass,
        "oracle_grid": np.array(arms.ORACLE_GRID),
        "oracle_grid_fraction": grid_fraction,
        "always_kept_floor": np.array(geometry.floor),
        **rules.arrays(),
    }


def arm_counts(
    arm: str,
    j: int,
    plan: dict[str, np.ndarray],
    rules: Rules,
    inputs: list[tuple[np.ndarray, np.ndarray, torch.Tensor]],
    oracle: torch.Tensor,
    geometry: Geometry,
    log_q_override: np.ndarray | None = None,
) -> torch.Tensor:
    """Keys kept per query [b, layer, head, pos] for one arm at budget index j: every visible key
    before `skip_first`, the arm's counts from there."""
    first = geometry.first
    n_layers, n_pos = geometry.visible.shape
    n_heads = oracle.shape[2]
    counts = geometry.visible[None, :, None, :].expand(len(inputs), n_layers, n_heads, n_pos)
    counts = counts.clone()
    if arm == arms.BOUND:
        counts[..., first:] = oracle[..., first:, j]
        return counts
    a = arms.ARMS.index(arm)
    for i, (log_q, shuffled, u) in enumerate(inputs):
        features = shuffled if arm == arms.CONTROL else log_q
        if log_q_override is not None:
            features = log_q_override[i]
        pred = torch.from_numpy(predict(arm, rules, geometry.log_n, features, j))
        counts[i, ..., first:] = arms.keep_counts(
            pred, float(plan["log_scale"][a, j]), u, geometry.fewest[:, first:],
            geometry.visible[:, first:],
        )  # fmt: skip
    return counts
