"""The plan between the dense and the masked passes (`Plan`, written as plan.json): each fitted
arm's cells, their hulls and their allocation per budget, the recency arm's scale and the top-p
arms' masses, and from it the keys every query of an evaluation window keeps (`arm_counts`).

Calibration fixes everything an arm knows: the feature residuals' means and quantile edges, each
cell's loss and cost curves (shrunk towards the parent cell) and their hulls, and a λ per budget
(`lambda_calibration`; applied to the evaluation queries it reaches `lambda_transfer_budget`,
what an engine that fixes λ in advance would spend). The budget itself is met on the evaluation
dense pass: one λ per arm and budget whose allocation has that mean cost there, the cell at λ
split between two vertices by a seeded coin. The plan and the masked stage read a window's inputs
the same way (`window_inputs`, `arm_counts`), so the masked passes meet exactly the budgets the
plan set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from spectra_interp.budget import allocate as al
from spectra_interp.budget import arms
from spectra_interp.budget.cells import (
    FeatureEdges,
    Grid,
    fit_edges,
    position_bins,
    shuffle_within_cells,
)
from spectra_interp.config import BudgetConfig
from spectra_interp.corpus import Windows
from spectra_interp.metrics import keys_seen
from spectra_interp.results import store
from spectra_interp.results.layout import BudgetLayout

CAL, EVAL = BudgetLayout.CALIBRATION, BudgetLayout.EVALUATION
FEATURES = (arms.QNORM, arms.ENTROPY)


class Geometry:
    """Keys visible and the fewest kept per (layer, position), the evaluated positions and their
    position bins."""

    def __init__(self, windows: tuple[int | None, ...], config: BudgetConfig) -> None:
        self.visible = torch.stack([keys_seen(config.ctx, w) for w in windows])
        self.fewest = arms.fewest_keys(self.visible, config.sink, config.recent)
        self.first = config.skip_first
        self.floor = arms.floor_budget(self.visible, self.fewest, self.first)
        self.pbin = position_bins(self.log_n, config.position_cells)

    @property
    def log_n(self) -> np.ndarray:
        """log(keys visible) at the evaluated positions, [layer, pos]."""
        return np.log(self.visible[:, self.first :].double().numpy())

    @property
    def n(self) -> np.ndarray:
        return self.visible[:, self.first :].numpy()[:, None, :]

    @property
    def least(self) -> np.ndarray:
        return self.fewest[:, self.first :].numpy()[:, None, :]


def feature_of(name: str, shard: dict[str, np.ndarray], first: int) -> np.ndarray:
    """A per-query feature at the evaluated positions: log‖q‖ or H (nats)."""
    if name == arms.QNORM:
        return np.log(np.maximum(shard["qnorm"][..., first:].astype(np.float64), 1e-30))
    return shard["entropy"][..., first:].astype(np.float64)


@dataclass(frozen=True)
class WindowInputs:
    """One window's per-query inputs at the evaluated positions: features, dither, coin."""

    window_id: int
    features: dict[str, np.ndarray]  # name -> [layer, head, pos]
    u: np.ndarray
    coin: np.ndarray


def window_inputs(
    shard: dict[str, np.ndarray], window_id: int, geometry: Geometry, config: BudgetConfig
) -> WindowInputs:
    first = geometry.first
    shape = shard["qnorm"].shape
    u = arms.dither(config.seed, window_id, shape).numpy()[..., first:]
    coin = arms.dither(config.seed, window_id, shape, arms.COIN_STREAM).numpy()[..., first:]
    return WindowInputs(window_id, {f: feature_of(f, shard, first) for f in FEATURES}, u, coin)


@dataclass(frozen=True)
class ArmPlan:
    """One fitted arm: each cell's hull (grid indices, -1 padded) and calibration count, and per
    budget the allocation met on the evaluation pass and λ fixed on calibration."""

    vertex: np.ndarray  # [cell, grid]
    n_vertices: np.ndarray  # [cell]
    cost: np.ndarray  # [cell, grid] calibration cost at each hull vertex
    loss: np.ndarray  # [cell, grid] calibration loss (shrunk) at each hull vertex
    count: np.ndarray  # [cell] calibration queries
    low: np.ndarray  # [budget, cell]
    high: np.ndarray  # [budget, cell]
    share_high: np.ndarray  # [budget, cell]
    lam: np.ndarray  # [budget]
    cal_low: np.ndarray  # [budget, cell]: the calibration λ's allocation
    cal_high: np.ndarray
    cal_share_high: np.ndarray
    lam_calibration: np.ndarray  # [budget]

    @property
    def hulls(self) -> al.Hulls:
        return al.Hulls(self.vertex, self.cost, self.loss, self.n_vertices)

    def allocation(self, j: int, transfer: bool = False) -> al.Allocation:
        if transfer:
            low, high, share = self.cal_low[j], self.cal_high[j], self.cal_share_high[j]
            lam = self.lam_calibration[j]
        else:
            low, high, share, lam = self.low[j], self.high[j], self.share_high[j], self.lam[j]
        return al.Allocation(float(lam), low, high, share, float("nan"))


@dataclass(frozen=True)
class Plan:
    """Everything the masked stage needs, and what the results report of the allocation."""

    budgets: tuple[float, ...]
    seed: int
    position_cells: int
    feature_cells: int
    always_kept_floor: float
    features: dict[str, FeatureEdges]
    fitted: dict[str, ArmPlan]
    recency_log_scale: list[float]  # per budget
    top_p_mass: dict[str, list[float]]  # arm -> per budget
    top_p_grid_fraction: dict[str, list[float]]  # arm -> mean share at each grid mass
    planned: dict[str, list[float]] = field(default_factory=dict)  # arm -> per budget
    transfer_budget: dict[str, list[float]] = field(default_factory=dict)  # fitted arms

    def grid(self, n_layers: int, n_heads: int) -> Grid:
        return Grid(n_layers, n_heads, self.position_cells, self.feature_cells)

    def to_json(self) -> dict[str, Any]:
        return _listed(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        fitted = {
            name: ArmPlan(**{k: np.asarray(v) for k, v in arm.items()})
            for name, arm in data["fitted"].items()
        }
        features = {
            name: FeatureEdges(np.asarray(f["mean"]), np.asarray(f["edges"], dtype=np.float64))
            for name, f in data["features"].items()
        }
        values = {**data, "fitted": fitted, "features": features}
        values["budgets"] = tuple(data["budgets"])
        return cls(**values)


def _listed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_listed(v) for v in value]
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
        return np.vectorize(_short, otypes=[object])(value).tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _short(x: float) -> float:
    """A float written with 9 significant digits (the plan is read back from its JSON, so every
    process uses the same numbers)."""
    return float(f"{x:.9g}")


def write_plan(layout: BudgetLayout, plan: Plan) -> None:
    store.write_json(layout.plan, plan.to_json())


def read_plan(layout: BudgetLayout) -> Plan:
    return Plan.from_json(json.loads(layout.plan.read_text()))


# --- cells and counts ------------------------------------------------------------------------


def query_cells(
    arm: arms.Arm,
    grid: Grid,
    features: dict[str, FeatureEdges],
    inputs: WindowInputs,
    pbin: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Each evaluated query's cell under a fitted arm, [layer, head, pos]."""
    shape = inputs.u.shape
    fbin = None
    if arm.feature is not None:
        edges = features[arm.feature]
        residual = edges.residual(inputs.features[arm.feature], pbin)
        if arm.shuffled:
            residual = shuffle_within_cells(residual, pbin, seed, inputs.window_id)
        fbin = edges.bins(residual)
    return grid.ids(arm, pbin, fbin, shape)


def cost_curves(n: np.ndarray, fewest: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Each query's kept fraction at every grid fraction, [..., grid] (float32)."""
    return np.stack(
        [
            (al.kept_counts(np.asarray(f), n, fewest, u) / n).astype(np.float32)
            for f in al.FRACTIONS
        ],
        axis=-1,
    )


def fitted_counts(
    arm_plan: ArmPlan, allocation: al.Allocation, cells: np.ndarray, inputs: WindowInputs,
    geometry: Geometry,
) -> np.ndarray:  # fmt: skip
    """Keys kept per evaluated query [layer, head, pos] under one allocation."""
    fractions = al.query_fractions(allocation, arm_plan.hulls, cells, inputs.coin)
    return al.kept_counts(fractions, geometry.n, geometry.least, inputs.u)


def arm_counts(
    arm_name: str,
    j: int,
    plan: Plan,
    inputs: list[WindowInputs],
    top_p_counts: dict[str, torch.Tensor],
    geometry: Geometry,
    n_heads: int,
    transfer: bool = False,
) -> torch.Tensor:
    """Keys kept per query [b, layer, head, pos] for one arm at budget index j: every visible key
    before `skip_first`, the arm's counts from there. `top_p_counts` holds the top-p arms' counts
    per query at their masses [b, layer, head, pos, budget]."""
    arm = arms.REGISTRY[arm_name]
    first = geometry.first
    n_layers, n_pos = geometry.visible.shape
    counts = geometry.visible[None, :, None, :].expand(len(inputs), n_layers, n_heads, n_pos)
    counts = counts.clone()
    if arm.keys == arms.TOP_P_KEYS:
        counts[..., first:] = top_p_counts[arm_name][..., first:, j]
        return counts
    if arm.keys == arms.RECENCY_KEYS:
        for i, x in enumerate(inputs):
            counts[i, ..., first:] = arms.keep_counts(
                torch.zeros(x.u.shape, dtype=torch.float64), plan.recency_log_scale[j],
                torch.from_numpy(x.u), geometry.fewest[:, first:], geometry.visible[:, first:],
            )  # fmt: skip
        return counts
    arm_plan = plan.fitted[arm_name]
    grid = plan.grid(n_layers, n_heads)
    allocation = arm_plan.allocation(j, transfer)
    for i, x in enumerate(inputs):
        cells = query_cells(arm, grid, plan.features, x, geometry.pbin, plan.seed)
        counts[i, ..., first:] = torch.from_numpy(
            fitted_counts(arm_plan, allocation, cells, x, geometry)
        )
    return counts


# --- making the plan -------------------------------------------------------------------------


def _inputs(
    layout: BudgetLayout, stage: str, window_ids: np.ndarray, geometry: Geometry,
    config: BudgetConfig,
) -> Iterator[tuple[dict[str, np.ndarray], WindowInputs]]:  # fmt: skip
    """Each window's shard and inputs, one window at a time (the plan holds no more)."""
    for w in window_ids:
        shard = store.read_shard(layout, stage, int(w))
        yield shard, window_inputs(shard, int(w), geometry, config)


def _parent(arm: arms.Arm) -> str | None:
    """The fitted arm whose cells this arm's cells split (None for the one-cell arm)."""
    if not arm.cells:
        return None
    for name in arms.FITTED:
        other = arms.REGISTRY[name]
        if other.cells == arm.cells[:-1] and other.feature is None:
            return name
    raise AssertionError(f"{arm.name} has no parent arm")


class CellSums:
    """Per fitted arm and cell: the sums over queries of the loss and the cost at each grid
    fraction, and the count, accumulated window by window (mergeable)."""

    def __init__(self, n_cells: dict[str, int]) -> None:
        g = len(al.FRACTIONS)
        self.n_cells = n_cells
        self.loss = {a: np.zeros((n, g)) for a, n in n_cells.items()}
        self.cost = {a: np.zeros((n, g)) for a, n in n_cells.items()}
        self.count = {a: np.zeros(n) for a, n in n_cells.items()}

    def add(self, cells: dict[str, np.ndarray], cost: np.ndarray, loss: np.ndarray | None) -> None:
        """One window: `cells[arm]` [q], `cost` and `loss` [q, grid] (loss None: costs only)."""
        for name, ids in cells.items():
            n = self.n_cells[name]
            self.count[name] += np.bincount(ids, minlength=n)
            for g in range(cost.shape[1]):
                self.cost[name][:, g] += np.bincount(ids, weights=cost[:, g], minlength=n)
                if loss is not None:
                    self.loss[name][:, g] += np.bincount(ids, weights=loss[:, g], minlength=n)

    def means(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean loss, mean cost, count) per cell (0 where a cell is empty)."""
        count = self.count[name]
        safe = np.maximum(count, 1)[:, None]
        return self.loss[name] / safe, self.cost[name] / safe, count


def fit_arm_curves(
    raw: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], ratio: dict[str, int]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per fitted arm: (shrunk loss, cost, count) per cell from its raw (mean loss, mean cost,
    count), parents first: each curve shrunk towards its parent cell's, an empty cell's cost its
    parent's."""
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name in arms.FITTED:
        mean_loss, mean_cost, count = raw[name]
        parent = _parent(arms.REGISTRY[name])
        if parent is None:
            out[name] = (mean_loss, mean_cost, count)
            continue
        up = np.arange(len(count)) // ratio[name]
        parent_loss = raw[parent][0]
        shrunk_loss = al.shrink(mean_loss, count, parent_loss[up], out[parent][0][up])
        cell_cost = np.where(count[:, None] > 0, mean_cost, out[parent][1][up])
        out[name] = (shrunk_loss, cell_cost, count)
    return out


def make_plan(
    config: BudgetConfig,
    layout: BudgetLayout,
    splits: dict[str, Windows],
    geometry: Geometry,
) -> Plan:
    """Fit every fitted arm's allocation on the calibration shards and meet each budget on the
    evaluation shards; the recency scale and the top-p masses likewise. Shards are read one
    window at a time and reduced to sums per cell."""
    ids = {split: splits[split].meta["window_id"].to_numpy() for split in (CAL, EVAL)}

    def inputs(split: str) -> Iterator[tuple[dict[str, np.ndarray], WindowInputs]]:
        return _inputs(layout, split, ids[split], geometry, config)

    features, grid = _feature_edges(inputs(CAL), geometry, config)
    n_cells = {name: grid.n_cells(arms.REGISTRY[name]) for name in arms.FITTED}
    ratio = {name: grid.parent(arms.REGISTRY[name]) for name in arms.FITTED}

    def cells_of(x: WindowInputs) -> dict[str, np.ndarray]:
        return {
            name: query_cells(
                arms.REGISTRY[name], grid, features, x, geometry.pbin, config.seed
            ).ravel()
            for name in arms.FITTED
        }

    n_grid = len(al.FRACTIONS)
    calibration = CellSums(n_cells)
    for shard, x in inputs(CAL):
        cost = cost_curves(geometry.n, geometry.least, x.u).reshape(-1, n_grid)
        calibration.add(cells_of(x), cost, shard["loss"].reshape(-1, n_grid))
    curves = fit_arm_curves({name: calibration.means(name) for name in arms.FITTED}, ratio)
    evaluation = CellSums(n_cells)
    shares = {name: 0.0 for name in arms.TOP_P}
    share_key = {arms.BOUND: "oracle_share", arms.ESTIMATED: "estimated_share"}
    for shard, x in inputs(EVAL):
        cost = cost_curves(geometry.n, geometry.least, x.u).reshape(-1, n_grid)
        evaluation.add(cells_of(x), cost, None)
        for name in arms.TOP_P:
            shares[name] = shares[name] + shard[share_key[name]].sum((0, 1))
    n_queries = len(ids[EVAL]) * grid.n_heads * grid.n_layers * (config.ctx - geometry.first)
    shares = {name: np.asarray(v) / n_queries for name, v in shares.items()}
    budgets = tuple(sorted(float(b) for b in config.budgets))
    fitted = {
        name: _arm_plan(curves[name], evaluation.means(name), budgets) for name in arms.FITTED
    }
    recency = _recency_log_scales([x.u for _, x in inputs(EVAL)], geometry, budgets)
    top_p_mass = {a: [arms.oracle_mass(shares[a], b)[0] for b in budgets] for a in arms.TOP_P}
    plan = Plan(
        budgets=budgets, seed=config.seed, position_cells=config.position_cells,
        feature_cells=config.feature_cells, always_kept_floor=geometry.floor, features=features,
        fitted=fitted, recency_log_scale=recency, top_p_mass=top_p_mass,
        top_p_grid_fraction={a: list(map(float, shares[a])) for a in arms.TOP_P},
    )  # fmt: skip
    as_written = Plan.from_json(plan.to_json())  # the numbers every process will read back
    evaluated = [x for _, x in inputs(EVAL)]
    return _with_budgets(as_written, evaluated, geometry, grid.n_heads, shares, budgets)


def _feature_edges(
    calibration: Iterator[tuple[dict[str, np.ndarray], WindowInputs]],
    geometry: Geometry,
    config: BudgetConfig,
) -> tuple[dict[str, Any], Grid]:
    """The quantile edges of each per-query feature's residual (`fit_edges`) from the calibration
    windows, and the grid of cells they make."""
    values: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    for _, x in calibration:
        for name in FEATURES:
            values[name].append(x.features[name])
    n_layers, n_heads = values[arms.QNORM][0].shape[:2]
    grid = Grid(n_layers, n_heads, config.position_cells, config.feature_cells)
    features = {
        name: fit_edges(np.stack(v), geometry.pbin, config.position_cells, config.feature_cells)
        for name, v in values.items()
    }
    return features, grid


def _arm_plan(
    curve: tuple[np.ndarray, np.ndarray, np.ndarray],
    evaluated: tuple[Any, np.ndarray, np.ndarray],
    budgets: tuple[float, ...],
) -> ArmPlan:
    """One fitted arm: the lower hulls of its cells' (shrunk) calibration curves, the allocation
    that meets each budget on the evaluation queries, and the one λ fixed on calibration."""
    shrunk_loss, cell_cost, count = curve
    hulls = al.Hulls.of(cell_cost, shrunk_loss)
    _, eval_mean_cost, eval_count = evaluated
    w_eval, w_cal = eval_count / eval_count.sum(), count / count.sum()
    met = [al.allocate(hulls, w_eval, eval_mean_cost, b) for b in budgets]
    cal = [al.allocate(hulls, w_cal, cell_cost, b) for b in budgets]
    return ArmPlan(
        vertex=hulls.vertex, n_vertices=hulls.n_vertices, cost=hulls.cost, loss=hulls.loss,
        count=count,
        low=np.stack([a.low for a in met]), high=np.stack([a.high for a in met]),
        share_high=np.stack([a.share_high for a in met]), lam=np.array([a.lam for a in met]),
        cal_low=np.stack([a.low for a in cal]), cal_high=np.stack([a.high for a in cal]),
        cal_share_high=np.stack([a.share_high for a in cal]),
        lam_calibration=np.array([a.lam for a in cal]),
    )  # fmt: skip


def _recency_log_scales(
    per_window_u: list[np.ndarray], geometry: Geometry, budgets: tuple[float, ...]
) -> list[float]:
    """The recency arm's log scale per budget, met on the evaluation queries."""
    u = torch.from_numpy(np.stack(per_window_u))
    first = geometry.first
    return [
        float(
            arms.solve_log_scale(
                torch.zeros(u.shape, dtype=torch.float64), u, geometry.fewest[:, first:],
                geometry.visible[:, first:], b,
            )[0]
        )
        for b in budgets
    ]  # fmt: skip


def _with_budgets(
    plan: Plan,
    inputs: list[WindowInputs],
    geometry: Geometry,
    n_heads: int,
    shares: dict[str, np.ndarray],
    budgets: tuple[float, ...],
) -> Plan:
    """The plan with each arm's mean budget on the evaluation pass (and, for the fitted arms,
    with λ fixed on calibration), counted from the very counts the masked stage will use."""
    first = geometry.first
    visible = geometry.visible[:, first:].double()[:, None]
    planned: dict[str, list[float]] = {}
    transfer: dict[str, list[float]] = {}
    for name in arms.ARMS:
        arm = arms.REGISTRY[name]
        if arm.keys == arms.TOP_P_KEYS:
            planned[name] = [arms.oracle_mass(shares[name], b)[1] for b in budgets]
            continue
        row, moved = [], []
        for j in range(len(budgets)):
            for out, flag in ((row, False), (moved, True)):
                if flag and not arm.fitted:
                    continue
                total = 0.0
                for x in inputs:  # one window at a time
                    counts = arm_counts(name, j, plan, [x], {}, geometry, n_heads, transfer=flag)
                    total += float((counts[..., first:].double() / visible).mean())
                out.append(total / len(inputs))
        planned[name] = row
        if arm.fitted:
            transfer[name] = moved
    return Plan(**{**plan.__dict__, "planned": planned, "transfer_budget": transfer})
