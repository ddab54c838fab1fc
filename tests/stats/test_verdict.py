"""The verdict against the success criteria, as JSON and text."""

import json

import numpy as np
import pandas as pd
import pytest

from spectra_interp.records import to_json
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.verdict import RunFacts, Verdict, interpretation, verdict


def make_table(rs, qs, layers, perm=0.0, random_r=np.nan):
    n = len(rs)
    return pd.DataFrame(
        {
            "layer": layers,
            "head": np.arange(n),
            "pearson_r": rs,
            "q_fdr": qs,
            "perm_r": np.full(n, perm),
            "random_init_r": np.full(n, random_r),
            "partial_r_position": np.asarray(rs) * 0.5,
        }
    )


def test_verdict_counts_and_criteria():
    rs = [-0.8, -0.6, 0.7, -0.55, -0.2, 0.1, -0.9, np.nan, -0.3, 0.05]
    qs = [0.001, 0.005, 0.0001, 0.02, 0.5, 0.9, 0.001, np.nan, 0.0001, 0.7]
    table = make_table(rs, qs, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1], perm=0.001)
    s = verdict(table)
    assert s.heads_total == 10 and s.heads_with_r == 9
    assert to_json(s.passing) == {
        "total": 4,
        "negative": 3,
        "positive": 1,
        "share_of_heads": 0.4,
        "share_negative": 0.75,
    }
    assert [(d.layer, d.passing, d.negative, d.positive) for d in s.per_layer] == [
        (0, 3, 2, 1),
        (1, 1, 1, 0),
    ]
    c = s.criteria
    assert c.effect_size.met and c.effect_size.heads == 5
    assert c.significance.met and c.significance.strong_heads_not_significant == 1
    assert c.randomization_control.met
    assert s.all_criteria_met
    assert not s.controls.random_init.available
    json.dumps(s.to_json(), allow_nan=False)
    text = s.text()
    assert "passing" in text and "75% negative" in text and "all seed criteria met" in text

    strict = verdict(table, Criteria(fdr=0.0001))
    assert strict.passing.total == 0 and strict.passing.share_negative is None
    assert not strict.criteria.significance.met and not strict.all_criteria_met
    assert "NOT met" in strict.text()

    biased = verdict(make_table(rs, qs, [0] * 10, perm=0.03, random_r=0.1))
    assert not biased.criteria.randomization_control.met
    assert biased.controls.random_init.mean_r == pytest.approx(0.1)
    json.dumps(biased.to_json(), allow_nan=False)

    few = make_table([-0.9] + [0.0] * 19, [0.001] + [0.5] * 19, [0] * 20)
    assert not verdict(few).criteria.effect_size.met  # 1 of 20 heads is 5% < 10%


def test_beyond_r_and_the_interpretation_say_what_the_numbers_say():
    rs = [-0.8, -0.6, -0.7, -0.2]
    table = make_table(rs, [0.001] * 4, [0, 0, 1, 1])
    table = table.assign(
        delta_r2=[-0.2, -0.1, 0.0, 0.01],
        delta_r2_ci_low=[-0.3, -0.15, -0.01, 0.005],
        delta_r2_ci_high=[-0.1, -0.05, 0.01, 0.02],
        temperature_share=[1.0, 0.8, 0.5, np.nan],
        auroc_low_entropy=[0.9, 0.7, 0.6, 0.5],
    )
    s = verdict(table)
    beyond = s.beyond_r
    assert beyond.delta_r2.heads_ci_excludes_0 == 3
    assert beyond.delta_r2.heads_ci_below_0 == 2 and beyond.delta_r2.heads_ci_above_0 == 1
    assert beyond.temperature_share.median == pytest.approx(0.8)
    assert [(h.layer, h.head) for h in beyond.best_auroc_heads][:2] == [(0, 0), (0, 1)]
    assert "in 3 of 4 heads (75%; 2 with larger ‖q‖ going with lower H)" in beyond.finding
    lines = interpretation(s)
    assert lines[0].startswith("Success criteria of the original plan: all met")
    assert lines[1] == f"Beyond position: {beyond.finding}"
    assert "median temperature share is 0.80" in lines[2]
    assert "Beyond r:" in s.text()
    few = table.assign(delta_r2_ci_low=-0.1, delta_r2_ci_high=0.1)
    assert verdict(few).beyond_r.finding.startswith("‖q‖ adds little beyond position")
    assert "whose 90% CI excludes 0" in verdict(few, ci_level=0.9).beyond_r.finding


def test_the_summary_reads_back_as_the_same_record_with_its_keys_in_order():
    table = make_table([-0.8, -0.6, 0.7], [0.001, 0.005, 0.0001], [0, 0, 1], perm=0.001)
    run = RunFacts("m", "bundled", 64, 6, 3, "window", 6, 1, ["position"], 0, {"trained": {}})
    s = verdict(table, Criteria(r_threshold=0.4), run=run)
    recorded = json.loads(json.dumps(s.to_json(), allow_nan=False))
    assert list(recorded) == [
        "hypothesis", "thresholds", "heads_total", "heads_measured", "heads_with_r", "passing",
        "per_layer", "controls", "criteria", "all_criteria_met", "beyond_r", "degenerate", "run",
    ]  # fmt: skip
    assert recorded["thresholds"]["r_threshold"] == 0.4
    assert Verdict.from_json(recorded) == s
    assert Verdict.from_json({k: v for k, v in recorded.items() if k != "run"}).run is None
    older = {k: v for k, v in recorded.items() if k not in ("heads_measured", "degenerate")}
    assert Verdict.from_json(older) == s  # a folder from before degenerate heads: all measured
