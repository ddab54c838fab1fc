"""The forward passes of each stage, reduced to what a window's shard keeps.

- calibration: a dense pass; ‖q‖ and the least-squares sums of each query's log k_p;
- evaluation: a dense pass; ‖q‖ and the oracle's share of keys at every mass of its grid;
- masked: the dense pass and one masked pass per arm and budget; per-token KL, NLL and top-1
  agreement against the dense pass, the keys each head kept and their GQA union.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spectra_interp.budget import arms, mask
from spectra_interp.budget.curves import combos
from spectra_interp.budget.plan import (
    EVAL,
    Geometry,
    arm_counts,
    calibration_masses,
    reference_budget,
    window_inputs,
)
from spectra_interp.budget.quality import Reference, token_quality
from spectra_interp.budget.rules import Rules, log_qnorm, target_sums
from spectra_interp.config import BudgetConfig
from spectra_interp.results import store
from spectra_interp.results.layout import BudgetLayout


def evaluated_share(first: int) -> mask.Reducer:
    """Per head and mass: the sum over evaluated queries of keys / visible."""

    def reduce(counts: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor, qnorm: Any):
        keep = positions >= first
        return (counts[:, :, keep].double() / visible[keep, None].double()).sum(2)

    return reduce


def evaluated_fit_sums(first: int) -> mask.Reducer:
    """Per head and mass: the least-squares sums of log k_p over evaluated queries."""

    def reduce(counts: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor, qnorm: Any):
        keep = positions >= first
        return target_sums(counts[:, :, keep], visible[keep], qnorm[:, :, keep].log())

    return reduce


def calibration_block(model: Any, tokens: torch.Tensor, config: BudgetConfig) -> list[dict]:
    run = mask.new_pass(
        model, config.sink, config.recent, masses=calibration_masses(config), always_first=False,
        reducer=evaluated_fit_sums(config.skip_first),
    )  # fmt: skip
    mask.forward(model, tokens, run, logits=False)
    qnorm, sums = run.stacked("qnorm").numpy(), run.stacked("by_mass").numpy()
    return [{"qnorm": qnorm[i], "fit_sums": sums[i]} for i in range(len(tokens))]


def evaluation_block(model: Any, tokens: torch.Tensor, config: BudgetConfig) -> list[dict]:
    run = mask.new_pass(
        model, config.sink, config.recent, masses=arms.ORACLE_GRID,
        reducer=evaluated_share(config.skip_first),
    )  # fmt: skip
    mask.forward(model, tokens, run, logits=False)
    qnorm, share = run.stacked("qnorm").numpy(), run.stacked("by_mass").numpy()
    return [{"qnorm": qnorm[i], "oracle_share": share[i]} for i in range(len(tokens))]


def masked_block(
    model: Any,
    tokens: torch.Tensor,
    window_ids: list[int],
    plan: dict[str, np.ndarray],
    layout: BudgetLayout,
    geometry: Geometry,
    config: BudgetConfig,
) -> list[dict[str, np.ndarray]]:
    """Every arm and budget on one block of evaluation windows, reduced per window."""
    first = geometry.first
    rules = Rules.from_arrays(plan)
    budgets = [float(b) for b in plan["budgets"]]
    inputs = [
        window_inputs(store.read_shard(layout, EVAL, w)["qnorm"], w, geometry, config)
        for w in window_ids
    ]
    dense = mask.new_pass(
        model, config.sink, config.recent, masses=tuple(float(m) for m in plan["oracle_mass"])
    )
    dense_logits = mask.forward(model, tokens, dense)
    reference = Reference.of(dense_logits[:, first:-1])
    targets = tokens[:, first + 1 :]
    oracle = dense.stacked("by_mass")
    visible = geometry.visible[:, first:].double()
    n_kv = model.spectra_spec.n_kv_heads
    per_combo: list[dict[str, torch.Tensor]] = []
    moved = torch.zeros(len(window_ids), 2, dtype=torch.float64)
    for arm, budget in combos(tuple(budgets)):
        if arm == arms.DENSE:
            logits, run = dense_logits, dense
        else:
            j = budgets.index(budget)
            counts = arm_counts(arm, j, plan, rules, inputs, oracle, geometry)
            order = mask.RECENCY if arm in arms.RECENCY_ARMS else mask.SCORE
            run = mask.new_pass(model, config.sink, config.recent, counts=counts, order=order)
            logits = mask.forward(model, tokens, run)
            if arm == arms.PROPOSAL and budget == reference_budget(tuple(budgets)):
                moved = _moved(run, counts, j, plan, rules, inputs, oracle, geometry)
        quality = token_quality(reference, logits[:, first:-1], targets)
        kept = run.stacked("kept")[..., first:].double() / visible[:, None]
        union = run.stacked("union")[..., first:].double() / visible[:, None]
        per_combo.append({**quality, "kept": kept.sum(-1), "union": union.sum((1, 2, 3))})
        del logits
    out = []
    for i in range(len(window_ids)):
        record = {
            name: torch.stack([c[name][i] for c in per_combo]).numpy()
            for name in ("kl", "nll", "top1", "kept", "union")
        }
        record["moved"] = moved[i].numpy()
        record["n_kv_heads"] = np.array(n_kv)
        out.append(record)
    return out


def _moved(
    run: mask.Pass,
    counts: torch.Tensor,
    j: int,
    plan: dict[str, np.ndarray],
    rules: Rules,
    inputs: list,
    oracle: torch.Tensor,
    geometry: Geometry,
) -> torch.Tensor:
    """The qnorm arm with ‖q‖ read in its own masked pass instead of the dense one: per window,
    the sum over queries of |Δk| / n and of the new k / n."""
    first = geometry.first
    masked_q = log_qnorm(run.stacked("qnorm")[..., first:].numpy())
    again = arm_counts(arms.PROPOSAL, j, plan, rules, inputs, oracle, geometry, masked_q)
    visible = geometry.visible[:, first:].double()[:, None]
    change = (again - counts)[..., first:].abs().double() / visible
    share = again[..., first:].double() / visible
    return torch.stack([change.sum((1, 2, 3)), share.sum((1, 2, 3))], dim=1)
