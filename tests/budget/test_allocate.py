"""The loss-optimal allocator on planted loss curves with a known optimum."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from spectra_interp.budget import allocate as al


def planted(seed: int, n_cells: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells with convex and non-convex loss curves over the grid, costs = the fraction."""
    rng = np.random.default_rng(seed)
    grid = np.asarray(al.FRACTIONS)
    decay = rng.uniform(2, 30, size=(n_cells, 1))
    loss = np.exp(-decay * grid) + rng.uniform(0, 0.02, size=(n_cells, len(grid)))
    loss[:, -1] = 0.0
    cost = np.broadcast_to(grid, loss.shape).copy()
    weight = rng.dirichlet(np.ones(n_cells))
    return cost, loss, weight


def lp_optimum(cost, loss, weight, target) -> float:
    """The relaxed problem solved directly: mixtures of grid points per cell at mean cost target."""
    n_cells, n_grid = cost.shape
    c = (weight[:, None] * loss).ravel()
    a_eq = np.zeros((n_cells + 1, n_cells * n_grid))
    for i in range(n_cells):
        a_eq[i, i * n_grid : (i + 1) * n_grid] = 1
    a_eq[-1] = (weight[:, None] * cost).ravel()
    res = linprog(c, A_eq=a_eq, b_eq=[1] * n_cells + [target], bounds=(0, None))
    assert res.status == 0
    return float(res.fun)


def test_lower_hull_of_a_known_curve():
    cost = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    loss = np.array([1.0, 0.5, 0.45, 0.1, 0.1, 0.05])
    # (0.2, 0.45) lies above (0.1, 0.5) -> (0.3, 0.1); (0.4, 0.05) beats (0.4, 0.1)
    assert al.lower_hull(cost, loss).tolist() == [0, 1, 3, 5]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.05, 0.2, 0.37])
def test_the_allocation_is_the_optimum_with_one_lambda(seed, target):
    cost, loss, weight = planted(seed)
    hulls = al.Hulls.of(cost, loss)
    a = al.allocate(hulls, weight, cost, target)
    assert a.cost == pytest.approx(target, abs=1e-12)
    rows = np.arange(len(weight))
    lo_c, hi_c = hulls.cost[rows, a.low], hulls.cost[rows, a.high]
    lo_l, hi_l = hulls.loss[rows, a.low], hulls.loss[rows, a.high]
    got_loss = float((weight * ((1 - a.share_high) * lo_l + a.share_high * hi_l)).sum())
    got_cost = float((weight * ((1 - a.share_high) * lo_c + a.share_high * hi_c)).sum())
    assert got_cost == pytest.approx(target, abs=1e-12)
    assert got_loss == pytest.approx(lp_optimum(cost, loss, weight, target), abs=1e-9)
    # one λ: every unsplit cell sits on its L + λC minimum, the split cell is indifferent
    value = hulls.loss + a.lam * hulls.cost
    valid = np.arange(cost.shape[1])[None] < hulls.n_vertices[:, None]
    best = np.where(valid, value, np.inf).min(1)
    assert np.allclose(value[rows, a.low], best, atol=1e-12)
    assert np.allclose(value[rows, a.high], best, atol=1e-12)
    assert (a.share_high > 0).sum() <= 1


def test_targets_outside_the_reachable_range_take_the_ends():
    cost, loss, weight = planted(0)
    hulls = al.Hulls.of(cost, loss)
    assert (al.allocate(hulls, weight, cost, -1.0).low == 0).all()
    top = al.allocate(hulls, weight, cost, 2.0)
    assert (top.low == hulls.n_vertices - 1).all() and top.cost == pytest.approx(1.0)


def test_one_cell_meets_the_budget_by_splitting_its_queries():
    grid = np.asarray(al.FRACTIONS)
    hulls = al.Hulls.of(grid[None], np.exp(-5 * grid)[None])
    a = al.allocate(hulls, np.ones(1), grid[None], 0.33)
    low, high = a.fractions(hulls)
    assert low[0] <= 0.33 <= high[0] and 0 < a.share_high[0] < 1
    coin = np.random.default_rng(0).random(200_000)
    fractions = al.query_fractions(a, hulls, np.zeros(len(coin), dtype=np.int64), coin)
    assert fractions.mean() == pytest.approx(0.33, abs=2e-3)


def test_finer_cells_never_lose_at_the_same_lambda():
    """A refinement's Lagrangian is at most its parent's (before shrinkage), at every λ."""
    rng = np.random.default_rng(3)
    grid = np.asarray(al.FRACTIONS)
    per_query = np.exp(-rng.uniform(2, 40, size=(400, 1)) * grid)
    cost = np.broadcast_to(grid, per_query.shape)
    parent, _ = al.cell_means(np.zeros(400, dtype=np.int64), per_query, 1)
    child_ids = rng.integers(0, 4, size=400)
    child, count = al.cell_means(child_ids, per_query, 4)
    for lam in (0.01, 0.1, 1.0, 10.0):
        coarse = al.lagrangian(al.Hulls.of(cost[:1], parent), np.ones(1), lam)
        fine = al.lagrangian(al.Hulls.of(cost[:4], child), count / count.sum(), lam)
        assert fine <= coarse + 1e-12


def test_shrinkage_is_exact_where_the_cell_is_its_parent():
    rng = np.random.default_rng(0)
    loss, parent_shrunk = rng.random((3, 5)), rng.random((3, 5))
    same = al.shrink(loss, np.array([1.0, 10, 100]), loss, parent_shrunk)
    assert np.array_equal(same, parent_shrunk)
    parent_raw = np.zeros_like(loss)
    pulled = al.shrink(loss, np.array([0.0, 1e9, 64.0]), parent_raw, parent_raw)
    assert np.allclose(pulled[0], 0) and np.allclose(pulled[1], loss[1], rtol=1e-6)
    assert np.allclose(pulled[2], loss[2] / 2)


def test_kept_counts_are_clamped_and_dithered():
    n, fewest = np.array([10, 10, 10]), np.array([3, 3, 3])
    assert al.kept_counts(np.array([0.0, 0.55, 1.0]), n, fewest, np.array([0.5] * 3)).tolist() == [
        3,
        6,
        10,
    ]
