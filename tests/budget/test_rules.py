"""The budget rules on planted data: ‖q‖ that truly sets the needed span makes `qnorm` win; ‖q‖
that does not makes it tie its shuffled control. Every step is the real code: the fit, the
shuffle, the scale that meets the budget, the counts and the exact top-k selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spectra_interp.budget import arms, mask
from spectra_interp.budget.rules import (
    coefficients,
    fit_rules,
    position_bins,
    predict,
    shuffle_within_bins,
)
from spectra_interp.metrics import keys_for_mass, keys_seen

# Only the query's own key is always kept: a sink and a local window outside a narrow span would
# eat the few keys such a query needs under any rule.
T, HEADS, FIRST, SINK, LOCAL, MASS = 160, 2, 8, 0, 1, 0.9
BUDGET = 0.35  # a little above the mean span planted (about 0.3 of the visible keys)


def planted(seed: int, qnorm_sets_span: bool) -> dict[str, torch.Tensor]:
    """One layer's windows in which each query attends evenly to a span of r·n of its n visible
    keys (a random subset) and hardly at all elsewhere. ‖q‖ is 1/r (it sets the span) or drawn
    independently of r."""
    g = torch.Generator().manual_seed(seed)
    n_windows = 4
    shape = (n_windows, 1, HEADS, T)
    r = torch.exp(torch.randn(shape, generator=g) * 0.7 + math.log(0.25)).clamp(0.02, 1.0)
    noise = torch.exp(torch.randn(shape, generator=g) * 0.7)
    n = torch.arange(1, T + 1)
    span = torch.ceil(r * n).long()
    rank = torch.rand((*shape, T), generator=g).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), 2.0
    )
    rank = rank.argsort(-1).argsort(-1)  # each query's random order of its visible keys
    scores = 12.0 * (rank < span[..., None]).float()
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    p = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1)
    return {"scores": scores, "p": p, "qnorm": 1 / r if qnorm_sets_span else noise}


def lost_mass(data: dict[str, torch.Tensor], counts: torch.Tensor) -> float:
    """Attention mass the kept keys miss (what the masked softmax renormalises away)."""
    n_windows = data["p"].shape[0]
    allowed = torch.ones(T, T, dtype=torch.bool).tril().expand(n_windows * HEADS, T, T)
    positions = torch.arange(T)
    always = mask.always_kept(positions, T, SINK, LOCAL) & allowed
    scores = data["scores"].reshape(n_windows * HEADS, T, T)
    keep = mask.keep_top(
        scores.masked_fill(always, math.inf)[:, None], allowed[:, None],
        counts.reshape(n_windows * HEADS, T)[:, None],
    )[:, 0]  # fmt: skip
    kept = (data["p"].reshape(n_windows * HEADS, T, T) * keep).sum(-1)
    return float(1 - kept[:, FIRST:].mean())


def arm_losses(qnorm_sets_span: bool) -> dict[str, float]:
    calibration, evaluation = planted(0, qnorm_sets_span), planted(1, qnorm_sets_span)
    visible = keys_seen(T)[None]
    fewest = arms.fewest_keys(visible, SINK, LOCAL)
    log_n = np.log(visible[:, FIRST:].double().numpy())
    k_fit = keys_for_mass(calibration["p"], MASS)[..., FIRST:].double().numpy()
    rules = fit_rules(np.log(k_fit), log_n, np.log(calibration["qnorm"][..., FIRST:].numpy()))
    log_q = np.log(evaluation["qnorm"][..., FIRST:].double().numpy())
    bins = position_bins(log_n, 4)
    shuffled = np.stack([shuffle_within_bins(q, bins, 0, w) for w, q in enumerate(log_q)])
    u = torch.stack([arms.dither(0, w, (1, HEADS, T))[..., FIRST:] for w in range(len(log_q))])
    out = {}
    for arm in ("head_position", "qnorm", "qnorm_shuffled"):
        pred = torch.from_numpy(
            predict(arm, rules, log_n, shuffled if arm == "qnorm_shuffled" else log_q, 0)
        )
        log_scale, achieved = arms.solve_log_scale(
            pred, u, fewest[:, FIRST:], visible[:, FIRST:], BUDGET
        )
        assert abs(achieved - BUDGET) < 1e-3, (arm, achieved)
        counts = visible[None, :, None].expand(len(log_q), 1, HEADS, T).clone()
        counts[..., FIRST:] = arms.keep_counts(
            pred, log_scale, u, fewest[:, FIRST:], visible[:, FIRST:]
        )
        out[arm] = lost_mass(evaluation, counts)
    out["qnorm_slope"] = float(np.abs(coefficients("qnorm", rules, 0)[..., 2]).mean())
    return out


def test_qnorm_wins_where_the_norm_sets_the_span():
    loss = arm_losses(qnorm_sets_span=True)
    assert loss["qnorm_slope"] > 0.5
    assert loss["qnorm"] < 0.5 * loss["head_position"], loss
    assert loss["qnorm"] < 0.5 * loss["qnorm_shuffled"], loss


def test_qnorm_ties_its_shuffled_control_where_the_norm_says_nothing():
    loss = arm_losses(qnorm_sets_span=False)
    assert loss["qnorm_slope"] < 0.1
    assert abs(loss["qnorm"] - loss["qnorm_shuffled"]) < 0.05 * loss["head_position"], loss
    assert abs(loss["qnorm"] - loss["head_position"]) < 0.05 * loss["head_position"], loss


def test_fit_recovers_planted_coefficients():
    rng = np.random.default_rng(0)
    log_n = np.log(np.arange(8, 72, dtype=np.float64))[None].repeat(2, 0)
    log_q = rng.normal(size=(3, 2, 3, 64))
    a, b, c = rng.normal(size=(2, 3)), rng.uniform(0.2, 1, (2, 3)), rng.normal(size=(2, 3))
    log_k = (
        a[None, ..., None] + b[None, ..., None] * log_n[None, :, None] + c[None, ..., None] * log_q
    )
    rules = fit_rules(log_k, log_n, log_q)
    np.testing.assert_allclose(rules.qnorm[0], np.stack([a, b, c], -1), atol=1e-8)
    np.testing.assert_allclose(rules.r2_qnorm, 1.0, atol=1e-10)
    assert (rules.r2_head_position < 1).all()
    np.testing.assert_allclose(predict("qnorm", rules, log_n, log_q, 0), log_k, atol=1e-8)


def test_shuffle_permutes_within_each_bin_and_head_only():
    rng = np.random.default_rng(1)
    log_n = np.log(np.arange(1, 101, dtype=np.float64))[None]
    bins = position_bins(log_n, 5)
    assert bins.min() == 0 and bins.max() == 4 and (np.diff(bins[0]) >= 0).all()
    log_q = rng.normal(size=(1, 3, 100))
    shuffled = shuffle_within_bins(log_q, bins, seed=0, window_id=7)
    assert not np.array_equal(shuffled, log_q)
    for h in range(3):
        for b in range(5):
            cols = bins[0] == b
            np.testing.assert_array_equal(np.sort(shuffled[0, h, cols]), np.sort(log_q[0, h, cols]))
    np.testing.assert_array_equal(shuffled, shuffle_within_bins(log_q, bins, seed=0, window_id=7))
    assert not np.array_equal(shuffled, shuffle_within_bins(log_q, bins, seed=0, window_id=8))


@pytest.mark.parametrize("arm", ["uniform", "head", "head_position", "qnorm", "sink_local"])
def test_every_rule_is_its_coefficients(arm):
    rng = np.random.default_rng(2)
    log_n = np.log(np.arange(1, 11, dtype=np.float64))[None]
    log_q = rng.normal(size=(1, 2, 10))
    rules = fit_rules(rng.normal(size=(2, 1, 2, 10)), log_n, rng.normal(size=(2, 1, 2, 10)))
    c = coefficients(arm, rules, 0)
    want = c[..., 0, None] + c[..., 1, None] * log_n[:, None] + c[..., 2, None] * log_q
    np.testing.assert_allclose(predict(arm, rules, log_n, log_q, 0), want)
    if arm == "uniform":
        np.testing.assert_allclose(want, np.broadcast_to(log_n[:, None], want.shape))


def test_the_fit_from_sums_is_least_squares_per_head():
    rng = np.random.default_rng(3)
    log_n = np.log(np.arange(5, 45, dtype=np.float64))[None].repeat(2, 0)
    log_q = rng.normal(size=(2, 2, 3, 40))
    log_k = rng.normal(size=(2, 2, 3, 40)) + 0.7 * log_n[None, :, None] - 0.3 * log_q
    rules = fit_rules(log_k, log_n, log_q)
    for layer in range(2):
        for head in range(3):
            y = log_k[:, layer, head].ravel()
            n = np.broadcast_to(log_n[layer], (2, 40)).ravel()
            x = np.stack([np.ones_like(y), n, log_q[:, layer, head].ravel()], axis=1)
            beta, residual, *_ = np.linalg.lstsq(x, y, rcond=None)
            np.testing.assert_allclose(rules.qnorm[0, layer, head], beta, atol=1e-9)
            r2 = 1 - residual[0] / ((y - y.mean()) ** 2).sum()
            np.testing.assert_allclose(rules.r2_qnorm[0, layer, head], r2, atol=1e-9)
            np.testing.assert_allclose(rules.head[0, layer, head], (y - n).mean(), atol=1e-12)
