"""The loss-optimal allocator shared by every fitted arm (pure numpy).

An arm partitions the queries into cells. From the calibration documents each cell c has a mean
loss curve L_c(f) and a mean cost curve C_c(f) (the mean kept fraction of visible keys, the
always-kept keys and the dither included) over a grid of kept fractions f (`FRACTIONS`). The
allocator minimises the total loss at a mean budget B:

    minimise  sum_c w_c L_c(f_c)   subject to   sum_c w_c C_c(f_c) = B,

by Lagrangian relaxation: every cell takes the vertex of the lower convex hull of its points
(C_c(f), L_c(f)) that minimises L + λ·C, with one λ for the whole model. The total cost only falls
as λ grows, in steps where λ crosses the slope between two adjacent hull vertices of a cell; the
step that crosses B is found exactly (the breakpoints sorted by slope: the limit of a bisection on
λ), and the cell at that breakpoint splits its queries between its two vertices in the share that
meets B. This is the classic convex-hull/Lagrangian solution of the resource allocation problem
(Everett 1963; the bit-allocation form in Shoham & Gersho 1988).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int

# The kept fractions each cell's loss curve is measured at: fine where budgets are small.
FRACTIONS = (
    0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.17, 0.20, 0.23, 0.26, 0.30, 0.35, 0.40,
    0.45, 0.50, 0.60, 0.70, 0.80, 0.90, 1.0,
)  # fmt: skip
# Prior strength of the shrinkage of a cell's loss curve towards its parent's, in queries.
SHRINK_QUERIES = 64.0


def kept_counts(
    fractions: Float[np.ndarray, "*q"],
    visible: Int[np.ndarray, "*q"],
    fewest: Int[np.ndarray, "*q"],
    u: Float[np.ndarray, "*q"],
) -> Int[np.ndarray, "*q"]:
    """Keys kept at fraction f: floor(f·n + u), clamped to [fewest, n] (u the seeded dither)."""
    k = np.floor(np.asarray(fractions, dtype=np.float64) * visible + u)
    return np.minimum(np.maximum(k, fewest), visible).astype(np.int64)


def lower_hull(
    cost: Float[np.ndarray, " grid"], loss: Float[np.ndarray, " grid"]
) -> Int[np.ndarray, " vertex"]:
    """Indices of the grid points on the lower-left convex hull of (cost, loss): ascending cost,
    strictly falling loss, convex (the points any λ >= 0 can choose). Of equal costs the lowest
    loss stands for them."""
    order = np.lexsort((loss, cost))
    hull: list[int] = []
    for i in order:
        if hull and cost[i] == cost[hull[-1]]:
            continue  # same cost, higher (or equal) loss
        if hull and loss[i] >= loss[hull[-1]]:
            continue  # costs more and loses no less: never chosen
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (cost[b] - cost[a]) * (loss[i] - loss[a]) - (loss[b] - loss[a]) * (
                cost[i] - cost[a]
            )
            if cross > 0:
                break
            hull.pop()  # b lies on or above the segment a -> i
        hull.append(int(i))
    return np.array(hull, dtype=np.int64)


@dataclass(frozen=True)
class Hulls:
    """Each cell's hull: grid indices of its vertices (padded with -1), their calibration costs
    and losses, and the slope -ΔL/ΔC from each vertex to the next (+inf past the last)."""

    vertex: Int[np.ndarray, "cell grid"]
    cost: Float[np.ndarray, "cell grid"]
    loss: Float[np.ndarray, "cell grid"]
    n_vertices: Int[np.ndarray, " cell"]

    @classmethod
    def of(
        cls, cost: Float[np.ndarray, "cell grid"], loss: Float[np.ndarray, "cell grid"]
    ) -> Hulls:
        n_cells, n_grid = cost.shape
        vertex = np.full((n_cells, n_grid), -1, dtype=np.int64)
        n_vertices = np.zeros(n_cells, dtype=np.int64)
        for c in range(n_cells):
            h = lower_hull(cost[c], loss[c])
            vertex[c, : len(h)] = h
            n_vertices[c] = len(h)
        safe = np.maximum(vertex, 0)
        return cls(
            vertex=vertex,
            cost=np.take_along_axis(cost, safe, 1),
            loss=np.take_along_axis(loss, safe, 1),
            n_vertices=n_vertices,
        )

    def slopes(self) -> Float[np.ndarray, "cell grid"]:
        """-(L[v+1] - L[v]) / (C[v+1] - C[v]) per vertex v; NaN where v+1 is no vertex."""
        out = np.full(self.cost.shape, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = -(np.diff(self.loss, axis=1)) / np.diff(self.cost, axis=1)
        valid = np.arange(self.cost.shape[1] - 1)[None] < (self.n_vertices - 1)[:, None]
        out[:, :-1] = np.where(valid, step, np.nan)
        return out

    def vertex_at(self, lam: float) -> Int[np.ndarray, " cell"]:
        """The hull vertex each cell takes at λ (ties: the cheaper vertex)."""
        return np.sum(self.slopes() > lam, axis=1)


@dataclass(frozen=True)
class Allocation:
    """One λ's allocation: each cell's vertex (`low`), the vertex above it (`high`) and the share
    of the cell's queries that take `high` (0 except in the cell split at λ)."""

    lam: float
    low: Int[np.ndarray, " cell"]
    high: Int[np.ndarray, " cell"]
    share_high: Float[np.ndarray, " cell"]
    cost: float  # the mean cost this allocation reaches on the queries it was solved for

    def fractions(self, hulls: Hulls) -> tuple[np.ndarray, np.ndarray]:
        """The grid fractions of each cell's low and high vertex."""
        grid = np.asarray(FRACTIONS)
        rows = np.arange(len(self.low))
        return grid[hulls.vertex[rows, self.low]], grid[hulls.vertex[rows, self.high]]


def allocate(
    hulls: Hulls,
    weight: Float[np.ndarray, " cell"],
    cost: Float[np.ndarray, "cell grid"],
    target: float,
) -> Allocation:
    """The one-λ allocation whose mean cost on a set of queries is `target`.

    `weight` is each cell's share of those queries, `cost` their mean cost at each grid fraction
    (calibration costs give the calibration λ; evaluation costs meet the budget on the evaluation
    pass). A target below every cell's cheapest vertex (above its dearest) gets those.
    """
    n_cells = len(weight)
    at = np.take_along_axis(cost, np.maximum(hulls.vertex, 0), 1)  # cost of each vertex
    low = np.zeros(n_cells, dtype=np.int64)
    total = float((weight * at[:, 0]).sum())
    slopes = hulls.slopes()
    cell, v = np.nonzero(np.isfinite(slopes))
    s = slopes[cell, v]
    order = np.lexsort((v, cell, -s))
    cell, v, s = cell[order], v[order], s[order]
    step = weight[cell] * (at[cell, v + 1] - at[cell, v])
    before = total + np.concatenate([[0.0], np.cumsum(step)])
    crossing = np.flatnonzero(before[1:] >= target)
    share = np.zeros(n_cells)
    if total >= target or len(cell) == 0:
        return Allocation(np.inf, low, low.copy(), share, total)
    if len(crossing) == 0:
        return Allocation(0.0, hulls.n_vertices - 1, hulls.n_vertices - 1, share, before[-1])
    i = int(crossing[0])
    for c, vv in zip(cell[:i], v[:i], strict=True):
        low[c] = vv + 1
    high = low.copy()
    c = int(cell[i])
    high[c] = low[c] + 1
    share[c] = (target - before[i]) / step[i] if step[i] > 0 else 0.0
    reached = before[i] + share[c] * step[i]
    return Allocation(float(s[i]), low, high, share, float(reached))


def lagrangian(hulls: Hulls, weight: Float[np.ndarray, " cell"], lam: float) -> float:
    """min over each cell's hull of w·(L + λ·C), summed: the objective at λ."""
    value = hulls.loss + lam * hulls.cost
    valid = np.arange(hulls.cost.shape[1])[None] < hulls.n_vertices[:, None]
    return float((weight * np.where(valid, value, np.inf).min(1)).sum())


def shrink(
    loss: Float[np.ndarray, "cell grid"],
    count: Float[np.ndarray, " cell"],
    parent_raw: Float[np.ndarray, "cell grid"],
    parent_shrunk: Float[np.ndarray, "cell grid"],
    strength: float = SHRINK_QUERIES,
) -> Float[np.ndarray, "cell grid"]:
    """Each cell's mean curve as its parent's (shrunk) curve plus the cell's own deviation from
    the parent, that deviation shrunk by n/(n + m) (m = `strength` pseudo-queries): an empty cell
    takes its parent's curve, a cell that holds all its parent's queries exactly its parent's."""
    keep = np.asarray(count, dtype=np.float64) / (np.asarray(count, dtype=np.float64) + strength)
    return parent_shrunk + keep[:, None] * (loss - parent_raw)


def cell_means(
    cells: Int[np.ndarray, " q"], values: Float[np.ndarray, "q grid"], n_cells: int
) -> tuple[Float[np.ndarray, "cell grid"], Float[np.ndarray, " cell"]]:
    """The mean of `values` per cell (0 where a cell is empty) and each cell's count."""
    count = np.bincount(cells, minlength=n_cells).astype(np.float64)
    sums = np.stack(
        [
            np.bincount(cells, weights=values[:, g], minlength=n_cells)
            for g in range(values.shape[1])
        ],
        axis=1,
    )
    return sums / np.maximum(count, 1)[:, None], count


def query_fractions(
    allocation: Allocation,
    hulls: Hulls,
    cells: Int[np.ndarray, "*q"],
    coin: Float[np.ndarray, "*q"],
) -> Float[np.ndarray, "*q"]:
    """Each query's kept fraction: its cell's low vertex, or the high one where its seeded coin
    in [0, 1) falls below the cell's `share_high`."""
    low, high = allocation.fractions(hulls)
    return np.where(coin < allocation.share_high[cells], high[cells], low[cells])
