"""The forward passes of each stage, reduced to what a window's shard keeps.

- calibration: a dense pass; ‖q‖, the attention entropy H and each evaluated query's loss at every
  fraction of the grid (`probes.LossCurves`), float16;
- evaluation: a dense pass; ‖q‖, H, and the top-p arms' shares of keys at every mass of the grid
  (exact, and on quantised keys);
- masked: the dense pass and one masked pass per arm and budget; per-token KL, NLL and top-1
  agreement against the dense pass, the keys each head kept (as fractions and as counts) and
  their GQA union.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spectra_interp.budget import allocate as al
from spectra_interp.budget import arms, mask
from spectra_interp.budget.curves import combos
from spectra_interp.budget.plan import (
    EVAL,
    Geometry,
    Plan,
    WindowInputs,
    arm_counts,
    window_inputs,
)
from spectra_interp.budget.probes import EstimatedTopP, LossCurves
from spectra_interp.budget.quality import Reference, token_quality
from spectra_interp.config import BudgetConfig
from spectra_interp.results import store
from spectra_interp.results.layout import BudgetLayout

QUALITY = ("kl", "nll", "top1")
MASKED_FIELDS = (*QUALITY, "kept", "kept_keys", "union")


def evaluated_share(first: int) -> mask.Reducer:
    """Per head and mass: the sum over evaluated queries of keys / visible."""

    def reduce(counts: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor, qnorm: Any):
        keep = positions >= first
        return (counts[:, :, keep].double() / visible[keep, None].double()).sum(2)

    return reduce


def grid_counts(
    window_ids: list[int], geometry: Geometry, n_heads: int, config: BudgetConfig
) -> torch.Tensor:
    """Keys each query would keep at every grid fraction [b, layer, head, pos, grid]."""
    n = geometry.visible.numpy()[:, None, :]
    fewest = geometry.fewest.numpy()[:, None, :]
    out = []
    for w in window_ids:
        u = arms.dither(config.seed, w, (len(n), n_heads, n.shape[-1])).numpy()
        out.append(
            np.stack([al.kept_counts(np.asarray(f), n, fewest, u) for f in al.FRACTIONS], -1)
        )
    return torch.from_numpy(np.stack(out))


def calibration_block(
    model: Any, tokens: torch.Tensor, window_ids: list[int], geometry: Geometry,
    config: BudgetConfig,
) -> list[dict]:  # fmt: skip
    n_heads = model.spectra_spec.n_heads
    probe = LossCurves(grid_counts(window_ids, geometry, n_heads, config), config.loss)
    run = mask.mask_state(model, config.sink, config.recent, probe=probe)
    mask.forward(model, tokens, run, logits=False)
    first = geometry.first
    qnorm = run.stacked("qnorm").numpy()
    loss = run.probed_stack("loss")[..., first:, :].numpy()
    entropy = run.probed_stack("entropy").numpy()
    return [{"qnorm": qnorm[i], "entropy": entropy[i], "loss": loss[i]} for i in range(len(tokens))]


def evaluation_block(model: Any, tokens: torch.Tensor, config: BudgetConfig) -> list[dict]:
    bits = arms.REGISTRY[arms.ESTIMATED].estimate_bits
    run = mask.mask_state(
        model, config.sink, config.recent, masses=arms.ORACLE_GRID,
        reducer=evaluated_share(config.skip_first),
        probe=EstimatedTopP(arms.ORACLE_GRID, bits, first=config.skip_first, with_entropy=True),
    )  # fmt: skip
    mask.forward(model, tokens, run, logits=False)
    qnorm, share = run.stacked("qnorm").numpy(), run.stacked("by_mass").numpy()
    entropy = run.probed_stack("entropy").numpy()
    estimated = run.probed_stack("estimated_share").numpy()
    return [
        {
            "qnorm": qnorm[i],
            "entropy": entropy[i],
            "oracle_share": share[i],
            "estimated_share": estimated[i],
        }  # fmt: skip
        for i in range(len(tokens))
    ]


def masked_block(
    model: Any,
    tokens: torch.Tensor,
    window_ids: list[int],
    plan: Plan,
    layout: BudgetLayout,
    geometry: Geometry,
    config: BudgetConfig,
) -> list[dict[str, np.ndarray]]:
    """Every arm and budget on one block of evaluation windows, reduced per window."""
    first = geometry.first
    budgets = list(plan.budgets)
    inputs: list[WindowInputs] = [
        window_inputs(store.read_shard(layout, EVAL, w), w, geometry, config) for w in window_ids
    ]
    bits = arms.REGISTRY[arms.ESTIMATED].estimate_bits
    dense = mask.mask_state(
        model, config.sink, config.recent, masses=tuple(plan.top_p_mass[arms.BOUND]),
        probe=EstimatedTopP(tuple(plan.top_p_mass[arms.ESTIMATED]), bits),
    )  # fmt: skip
    dense_logits = mask.forward(model, tokens, dense)
    reference = Reference.of(dense_logits[:, first:-1])
    targets = tokens[:, first + 1 :]
    top_p = {arms.BOUND: dense.stacked("by_mass"), arms.ESTIMATED: dense.probed_stack("estimated")}
    visible = geometry.visible[:, first:].double()
    n_heads = model.spectra_spec.n_heads
    n_kv = model.spectra_spec.n_kv_heads
    per_combo: list[dict[str, torch.Tensor]] = []
    for arm, budget in combos(tuple(budgets)):
        if arm == arms.DENSE:
            logits, run = dense_logits, dense
        else:
            counts = arm_counts(arm, budgets.index(budget), plan, inputs, top_p, geometry, n_heads)
            order = mask.RECENCY if arms.REGISTRY[arm].keys == arms.RECENCY_KEYS else mask.SCORE
            run = mask.mask_state(model, config.sink, config.recent, counts=counts, order=order)
            logits = mask.forward(model, tokens, run)
        quality = token_quality(reference, logits[:, first:-1], targets)
        kept_keys = run.stacked("kept")[..., first:].double()
        union = run.stacked("union")[..., first:].double() / visible[:, None]
        per_combo.append(
            {
                **quality,
                "kept": (kept_keys / visible[:, None]).sum(-1),
                "kept_keys": kept_keys.sum(-1),
                "union": union.sum((1, 2, 3)),
            }
        )
        del logits
    out = []
    for i in range(len(window_ids)):
        record = {
            name: torch.stack([c[name][i] for c in per_combo]).numpy() for name in MASKED_FIELDS
        }
        record["n_kv_heads"] = np.array(n_kv)
        out.append(record)
    return out
