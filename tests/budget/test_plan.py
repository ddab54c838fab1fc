"""The cells and the allocation on planted queries (no model): where a per-query signal truly sets
the span, qnorm wins and the verdict says "helps"; where it does not, "no useful effect"; with
one feature bin qnorm is head_position exactly; finer cells never lose at the same λ."""

from __future__ import annotations

import numpy as np
import pytest

from spectra_interp.budget import allocate as al
from spectra_interp.budget import arms
from spectra_interp.budget import verdict as vd
from spectra_interp.budget.cells import Grid, fit_edges, position_bins
from spectra_interp.budget.curves import paired_test
from spectra_interp.budget.plan import WindowInputs, fit_arm_curves, query_cells

T, HEADS, P_BINS, SEED = 96, 2, 4, 0
GRID = np.asarray(al.FRACTIONS)


def planted(n_docs: int, seed: int, signal: bool):
    """Per document one window of 1 layer x 2 heads x T queries: a span φ per query, the loss
    curve exp(-f/φ) over the grid, and log‖q‖ that sets φ (signal) or is independent of it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_docs, 1, HEADS, T))
    log_q = z + 0.1 * rng.normal(size=z.shape) if signal else rng.normal(size=z.shape)
    phi = np.clip(0.06 * np.exp(1.0 * z), 0.003, 1.0)
    loss = np.exp(-GRID / phi[..., None])
    entropy = np.log(phi * np.arange(1, T + 1))  # a stand-in for H: grows with the span
    return log_q, entropy, loss


def inputs_of(log_q, entropy, offset: int) -> list[WindowInputs]:
    rng = np.random.default_rng(offset)
    return [
        WindowInputs(
            offset + i,
            {arms.QNORM: log_q[i], arms.ENTROPY: entropy[i]},
            rng.random(log_q[i].shape),
            rng.random(log_q[i].shape),
        )  # fmt: skip
        for i in range(len(log_q))
    ]


def per_document_loss(signal: bool, feature_bins: int = 4, budget: float = 0.1):
    """Each arm's loss per evaluation document, allocated on calibration documents exactly as
    the plan does (costs = the fraction itself: no always-kept keys)."""
    log_n = np.log(np.arange(1, T + 1, dtype=np.float64))[None]
    pbin = position_bins(log_n, P_BINS)
    cal, ev = planted(60, 1, signal), planted(60, 2, signal)
    grid = Grid(1, HEADS, P_BINS, feature_bins)
    features = {
        name: fit_edges(values, pbin, P_BINS, feature_bins)
        for name, values in ((arms.QNORM, cal[0]), (arms.ENTROPY, cal[1]))
    }
    cal_in, ev_in = inputs_of(cal[0], cal[1], 0), inputs_of(ev[0], ev[1], 1000)
    names = arms.FITTED
    reg = arms.REGISTRY

    def cells(inputs, name):
        return np.stack([query_cells(reg[name], grid, features, x, pbin, SEED) for x in inputs])

    n_cells = {n: grid.n_cells(reg[n]) for n in names}
    ratio = {n: grid.parent(reg[n]) for n in names}
    flat_loss = cal[2].reshape(-1, len(GRID))
    cost = np.broadcast_to(GRID, flat_loss.shape)
    raw = {}
    for n in names:
        ids = cells(cal_in, n).ravel()
        mean_loss, count = al.cell_means(ids, flat_loss, n_cells[n])
        raw[n] = (mean_loss, al.cell_means(ids, cost, n_cells[n])[0], count)
    curves = fit_arm_curves(raw, ratio)
    out, allocations = {}, {}
    for name in names:
        shrunk, cell_cost, count = curves[name]
        hulls = al.Hulls.of(cell_cost, shrunk)
        ev_cells = cells(ev_in, name)
        eval_cost, eval_count = al.cell_means(ev_cells.ravel(), cost, n_cells[name])
        a = al.allocate(hulls, eval_count / eval_count.sum(), eval_cost, budget)
        allocations[name] = (hulls, a)
        coin = np.stack([x.coin for x in ev_in])
        f = al.query_fractions(a, hulls, ev_cells, coin)
        index = np.searchsorted(GRID, f)
        assert np.allclose(GRID[index], f)
        assert abs(f.mean() - budget) < 0.02  # every arm meets its budget
        out[name] = np.take_along_axis(ev[2], index[..., None], -1)[..., 0].sum((1, 2, 3))
    return out, allocations


def decide(losses) -> tuple[str, vd.Interval]:
    kw = {"level": 0.9, "n_boot": 400, "seed": 0}
    ratio = vd.ratio_interval(losses[arms.PROPOSAL], losses[arms.RIVAL], **kw)
    n = np.full(len(losses[arms.PROPOSAL]), float(HEADS * T))
    test = paired_test(losses[arms.PROPOSAL], losses[arms.CONTROL], n)
    beats = test["kl_diff"] < 0 and test["p_one_sided"] < 0.05
    return vd.call(ratio, 0.1, beats), ratio


def test_a_norm_that_sets_the_span_makes_qnorm_win_and_the_verdict_say_helps():
    losses, _ = per_document_loss(signal=True)
    verdict, ratio = decide(losses)
    assert verdict == vd.HELPS and ratio.high < 1
    assert losses[arms.PROPOSAL].sum() < losses[arms.CONTROL].sum()


def test_a_norm_that_says_nothing_gives_no_useful_effect():
    losses, _ = per_document_loss(signal=False)
    verdict, ratio = decide(losses)
    assert verdict == vd.NO_EFFECT, ratio
    # the entropy ceiling still sees the span: it is what a perfect scalar could add
    assert losses[arms.CEILING].sum() < losses[arms.RIVAL].sum()


def test_one_feature_bin_makes_qnorm_head_position_exactly():
    losses, allocations = per_document_loss(signal=True, feature_bins=1)
    assert np.array_equal(losses[arms.PROPOSAL], losses[arms.RIVAL])
    (h_q, a_q), (h_hp, a_hp) = allocations[arms.PROPOSAL], allocations[arms.RIVAL]
    assert np.array_equal(h_q.loss, h_hp.loss) and np.array_equal(a_q.low, a_hp.low)
    assert a_q.lam == a_hp.lam and np.array_equal(a_q.share_high, a_hp.share_high)


@pytest.mark.parametrize("lam", [0.02, 0.2, 2.0])
def test_entropy_never_loses_to_head_position_at_the_same_lambda_before_shrinkage(lam):
    log_n = np.log(np.arange(1, T + 1, dtype=np.float64))[None]
    pbin = position_bins(log_n, P_BINS)
    log_q, entropy, loss = planted(30, 5, signal=False)
    grid = Grid(1, HEADS, P_BINS, 4)
    features = {arms.QNORM: fit_edges(log_q, pbin, P_BINS, 4),
                arms.ENTROPY: fit_edges(entropy, pbin, P_BINS, 4)}  # fmt: skip
    inputs = inputs_of(log_q, entropy, 0)
    flat = loss.reshape(-1, len(GRID))
    cost = np.broadcast_to(GRID, flat.shape)
    value = {}
    for name in (arms.RIVAL, arms.CEILING):
        arm = arms.REGISTRY[name]
        ids = np.stack([query_cells(arm, grid, features, x, pbin, SEED) for x in inputs]).ravel()
        mean_loss, count = al.cell_means(ids, flat, grid.n_cells(arm))
        mean_cost, _ = al.cell_means(ids, cost, grid.n_cells(arm))
        value[name] = al.lagrangian(al.Hulls.of(mean_cost, mean_loss), count / count.sum(), lam)
    assert value[arms.CEILING] <= value[arms.RIVAL] + 1e-12
