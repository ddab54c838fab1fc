"""The verdict's call from the ratio's interval, the documents that would decide it, the ratio's
bootstrap interval and the typed summary's JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from spectra_interp.budget import verdict as vd


@pytest.mark.parametrize(
    ("low", "high", "beats", "expected"),
    [
        (0.7, 0.95, True, vd.HELPS),
        (0.7, 0.95, False, vd.UNDECIDED),  # below 1 but not better than its own shuffle
        (1.02, 1.3, False, vd.HURTS),
        (0.95, 1.05, False, vd.NO_EFFECT),
        (0.95, 1.05, True, vd.NO_EFFECT),
        (0.85, 1.05, False, vd.UNDECIDED),
        (0.95, 1.2, False, vd.UNDECIDED),
    ],
)
def test_the_call_follows_the_interval_and_the_margin(low, high, beats, expected):
    ratio = vd.Interval((low + high) / 2, low, high)
    assert vd.call(ratio, 0.1, beats) == expected


def test_documents_to_decide_shrink_the_interval_as_one_over_root_n():
    # centred at 1, half-width 0.2: inside ±0.1 needs half-width 0.1, four times the documents
    assert vd.documents_to_decide(vd.Interval(1.0, 0.8, 1.2), 0.1, 24) == 96
    # at 0.5, half-width 0.75: excluding 1 needs half-width 0.5, (1.5)^2 times the documents
    assert vd.documents_to_decide(vd.Interval(0.5, 0.0, 1.25), 0.1, 20) == 45
    assert vd.documents_to_decide(vd.Interval(None, None, None), 0.1, 20) is None


def test_the_ratio_interval_resamples_documents_together():
    rng = np.random.default_rng(0)
    rival = rng.uniform(1, 2, size=40)
    same = vd.ratio_interval(rival, rival, level=0.9, n_boot=200, seed=0)
    assert same == vd.Interval(1.0, 1.0, 1.0)
    half = vd.ratio_interval(rival / 2, rival, level=0.9, n_boot=200, seed=0)
    assert half.point == pytest.approx(0.5) and half.low == pytest.approx(0.5)
    noisy = vd.ratio_interval(
        rival * rng.uniform(0.5, 1.5, 40), rival, level=0.9, n_boot=400, seed=0
    )
    assert noisy.low < noisy.point < noisy.high


def test_the_summary_round_trips_through_json():
    b = vd.BudgetVerdict(
        0.2, vd.Interval(0.9, 0.8, 1.0), vd.UNDECIDED, 50, {"kl_diff": -0.1}, False,
        vd.Interval(0.1, None, 0.3), vd.Interval(0.2, 0.1, 0.3), vd.Interval(None, None, None),
    )  # fmt: skip
    summary = vd.Summary("q", "v", 0.1, 0.05, 0.9, 24, [b], {"met": True})
    assert vd.Summary.from_json(summary.to_json()) == summary


def test_each_source_gets_its_own_verdict():
    """qnorm halves KL on the books and changes nothing on the code: the per-source calls say so,
    each on its own documents."""
    import pandas as pd

    from spectra_interp.budget.arms import ARMS, CONTROL, PROPOSAL
    from spectra_interp.budget.curves import Masked, combos, source_table
    from spectra_interp.stats.clusters import DOCUMENT, Clusters

    budgets = (0.3,)
    index = {combo: c for c, combo in enumerate(combos(budgets))}
    rng = np.random.default_rng(0)
    n_windows, n_tokens = 40, 8
    kl = rng.uniform(0.9, 1.1, size=(n_windows, len(index), n_tokens))
    sources = pd.Series(["books"] * 20 + ["code"] * 20)
    books = (sources == "books").to_numpy()
    kl[books, index[(PROPOSAL, 0.3)]] *= 0.5
    kl[~books, index[(CONTROL, 0.3)]] = kl[~books, index[(PROPOSAL, 0.3)]]
    zeros = np.zeros((n_windows, len(index), 1, 1))
    masked = Masked(kl, kl, kl > 0, zeros, zeros, zeros[..., 0, 0], n_queries=1, n_kv_heads=1)
    clusters = Clusters(np.arange(n_windows), DOCUMENT)
    rows = source_table(
        masked, budgets, sources, clusters, alpha=0.05, margin=0.1, n_boot=200, seed=0
    )
    by = {row["source"]: row for row in rows}
    assert by["books"]["call"] == vd.HELPS and by["books"]["ratio_high"] < 0.6
    assert by["code"]["call"] == vd.NO_EFFECT
    assert by["books"]["n_documents"] == by["code"]["n_documents"] == 20
    assert set(by["books"]) >= set(ARMS)
