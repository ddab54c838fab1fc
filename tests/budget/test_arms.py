"""Budgets: the always-kept keys, the scale that meets a budget, the refusal of a budget too
small, and (on a finished tiny run) every arm's budget set and achieved within the tolerance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spectra_interp import cli
from spectra_interp.budget import arms, mask
from spectra_interp.budget.curves import combos
from spectra_interp.budget.plan import read_plan
from spectra_interp.config import BUDGET_TOLERANCE
from spectra_interp.errors import SpectraError
from spectra_interp.metrics import keys_seen, visible_keys
from spectra_interp.results.layout import BudgetLayout


@pytest.mark.parametrize("window", [None, 3, 6])
@pytest.mark.parametrize(("sink", "recent"), [(1, 4), (0, 1), (3, 0), (2, 2), (0, 0)])
def test_always_kept_count_is_the_mask_count(window, sink, recent):
    visible = keys_seen(20, window)[None]
    positions = torch.arange(20)
    seen = visible_keys(positions, 20, window)
    want = (mask.always_kept(positions, 20, sink, recent) & seen).sum(-1)
    assert torch.equal(arms.always_kept_count(visible, sink, recent)[0], want)
    assert (arms.fewest_keys(visible, sink, recent) >= 1).all()


@pytest.mark.parametrize("target", [0.12, 0.3, 0.55, 0.9])
def test_the_solved_scale_meets_the_budget(target):
    g = torch.Generator().manual_seed(0)
    visible = torch.stack([keys_seen(200), keys_seen(200, 50)])[:, 10:]
    fewest = arms.fewest_keys(torch.stack([keys_seen(200), keys_seen(200, 50)]), 1, 4)[:, 10:]
    pred = torch.randn(3, 2, 4, 190, generator=g, dtype=torch.float64) + visible.log()[:, None]
    u = torch.rand(3, 2, 4, 190, generator=g, dtype=torch.float64)
    log_scale, achieved = arms.solve_log_scale(pred, u, fewest, visible, target)
    counts = arms.keep_counts(pred, log_scale, u, fewest, visible)
    assert abs(achieved - target) <= arms.BISECTION_PRECISION
    assert achieved == arms.mean_fraction(counts, visible)
    assert (counts >= fewest[:, None]).all() and (counts <= visible[:, None]).all()


def test_budget_one_keeps_every_visible_key():
    visible = keys_seen(30)[None]
    pred = torch.zeros(1, 2, 30, dtype=torch.float64)
    log_scale, achieved = arms.solve_log_scale(pred, torch.rand(1, 2, 30), visible, visible, 1.0)
    assert log_scale == math.inf and achieved == 1.0


def test_the_oracle_mass_is_read_off_the_grid():
    grid = np.linspace(0.05, 1.0, len(arms.ORACLE_GRID))
    mass, got = arms.oracle_mass(grid, 0.5)
    assert abs(got - 0.5) <= (grid[1] - grid[0]) / 2
    assert mass == arms.ORACLE_GRID[int(np.argmin(abs(grid - 0.5)))]
    assert arms.oracle_mass(grid, 1.0) == (1.0, 1.0)


def test_a_budget_below_the_always_kept_keys_is_refused_in_one_sentence():
    visible = keys_seen(64)[None]
    floor = arms.floor_budget(visible, arms.fewest_keys(visible, 1, 4), 4)
    with pytest.raises(SpectraError) as err:
        arms.check_budgets((0.1, 0.5), floor, 1, 4)
    text = str(err.value)
    assert text.startswith("--budgets 0.1 is below") and text.count(". ") == 0
    assert text.endswith(".") and "--sink 1, --recent 4" in text
    arms.check_budgets((floor, 0.5), floor, 1, 4)


def test_the_command_refuses_a_budget_too_small_before_loading_weights(
    tiny_dir, corpus_dir, tmp_path, capsys
):
    argv = ["budget", "--model", str(tiny_dir), "--corpus", str(corpus_dir), "--ctx", "64",
            "--budgets", "0.05,0.5", "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --budgets 0.05 is below")
    assert not (tmp_path / "run").exists()


def test_every_arm_meets_its_budget_when_set_and_when_masked(finished):
    curves = pd.read_csv(finished / "budget_curves.csv")
    summary = pd.read_json(finished / "summary.json", typ="series")
    arms_rows = curves[curves["arm"] != arms.DENSE]
    assert set(arms_rows["arm"]) == set(arms.ARMS)
    assert (abs(arms_rows["keys_frac"] - arms_rows["budget"]) <= BUDGET_TOLERANCE).all()
    met = summary["budgets_met"]
    assert met["met"] and met["tolerance"] == BUDGET_TOLERANCE
    for row in met["arms"]:
        assert abs(row["planned"] - row["budget"]) <= BUDGET_TOLERANCE, row
        assert abs(row["achieved"] - row["planned"]) < 1e-9, row  # the masked pass applies the plan


def test_the_plan_orders_arms_and_budgets_as_the_shards_do(finished):
    plan = read_plan(BudgetLayout(finished))
    budgets = plan.budgets
    assert set(plan.planned) == set(arms.ARMS)
    assert all(len(v) == len(budgets) for v in plan.planned.values())
    for name in arms.TOP_P:
        assert (np.diff(plan.top_p_mass[name]) > 0).all()
    for name, arm_plan in plan.fitted.items():
        assert arm_plan.low.shape == (len(budgets), len(arm_plan.count)), name
        assert (np.diff(arm_plan.lam) <= 0).all()  # a larger budget, a smaller price
    shard = np.load(sorted((finished / "shards" / "masked").iterdir())[0])
    assert shard["kl"].shape[0] == len(combos(budgets)) == 1 + len(arms.ARMS) * len(budgets)
    assert (shard["kl"][0] == 0).all() and (shard["kl"][1:] >= 0).all()


def test_the_registry_is_the_only_list_of_arms():
    assert arms.ARMS == tuple(n for n in arms.REGISTRY if n != arms.DENSE)
    for name in (arms.PROPOSAL, arms.RIVAL, arms.CONTROL, arms.CEILING, arms.BOUND, arms.ESTIMATED):
        assert name in arms.REGISTRY
    fitted = [arms.REGISTRY[n] for n in arms.FITTED]
    # nested: each fitted arm's cells extend a coarser fitted arm's
    for arm in fitted:
        if arm.cells:
            assert any(o.cells == arm.cells[:-1] and o.feature is None for o in fitted), arm.name
    assert arms.REGISTRY[arms.CONTROL].shuffled and not arms.REGISTRY[arms.PROPOSAL].shuffled
    assert len({a.colour for a in arms.REGISTRY.values()}) == len(arms.REGISTRY)
