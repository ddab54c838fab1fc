"""What the dense passes of Phase 2 read from each block of queries (`mask.Probe`s, pure torch).

- `LossCurves`: each query's loss at the keys it would keep at every fraction of the grid
  (`allocate.FRACTIONS`), the always-kept keys first and then the highest scores; the loss is the
  attention mass outside the kept keys (`mass`) or the relative error of the attention output with
  the kept keys renormalised (`output`), and beside it the query's attention entropy H (nats);
- `Entropy`: H alone;
- `EstimatedTopP`: the top-p count of each query's attention computed against keys quantised to
  a few bits per channel (asymmetric min/max per channel over the layer's keys of the window, all
  KV heads together), per query or summed as a share of visible keys per head.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.budget.mask import Probe, QueryBlock, mass_counts
from spectra_interp.metrics import capped

MASS, OUTPUT = "mass", "output"
LOSSES = (MASS, OUTPUT)


def entropy(probs: Float[Tensor, "b h q key"]) -> Float[Tensor, "b h q"]:
    """H = -Σ p log p in nats (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp(min=1e-30))).sum(-1)


def ranked(block: QueryBlock) -> Int[Tensor, "b h q key"]:
    """The keys in the order every arm keeps them: always-kept first, then by score (visible
    keys only before the others)."""
    priority = block.scores.masked_fill(block.always, math.inf).masked_fill(
        ~block.allowed, -math.inf
    )
    return priority.argsort(dim=-1, descending=True, stable=True)


def mass_outside(
    probs: Float[Tensor, "b h q key"],
    order: Int[Tensor, "b h q key"],
    counts: Int[Tensor, "b h q g"],
) -> Float[Tensor, "b h q g"]:
    """1 - the attention mass of the first `counts` keys in `order`."""
    cumulative = probs.gather(-1, order).cumsum(-1)
    held = cumulative.gather(-1, (counts - 1).clamp(min=0))
    return (1 - held).clamp(min=0)


def output_error(
    probs: Float[Tensor, "b h q key"],
    order: Int[Tensor, "b h q key"],
    counts: Int[Tensor, "b h q g"],
    values: Float[Tensor, "b h key e"],
) -> Float[Tensor, "b h q g"]:
    """‖o_k - o‖ / ‖o‖: o the attention output, o_k the output over the first `counts` keys in
    `order` with their weights renormalised."""
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    full = torch.einsum("bhqk,bhke->bhqe", probs, values)
    norm = torch.linalg.vector_norm(full, dim=-1).clamp(min=1e-30)
    out = []
    for g in range(counts.shape[-1]):
        weights = probs * (rank < counts[..., g, None])
        kept = torch.einsum("bhqk,bhke->bhqe", weights, values)
        kept = kept / weights.sum(-1, keepdim=True).clamp(min=1e-30)
        out.append(torch.linalg.vector_norm(kept - full, dim=-1) / norm)
    return torch.stack(out, dim=-1)


class LossCurves(Probe):
    """Per query: the loss at each grid count (`counts` [b, layer, head, pos, grid]) and H."""

    def __init__(self, counts: Int[Tensor, "b layer head pos g"], loss: str) -> None:
        self.counts = counts
        self.loss = loss

    def __call__(self, block: QueryBlock) -> dict[str, Tensor]:
        counts = self.counts[:, block.layer, :, block.rows].to(block.probs.device)
        order = ranked(block)
        n = block.probs.shape[-1]
        if self.loss == MASS:
            loss = mass_outside(block.probs, order, counts)
        else:
            loss = output_error(block.probs, order, counts, block.values[:, :, :n])
        return {"loss": loss.to(torch.float16), "entropy": entropy(block.probs)}


class Entropy(Probe):
    def __call__(self, block: QueryBlock) -> dict[str, Tensor]:
        return {"entropy": entropy(block.probs)}


def quantised(keys: Float[Tensor, "b h s d"], bits: int) -> Float[Tensor, "b h s d"]:
    """Keys rounded to 2**bits levels per channel, min to max over the heads and positions."""
    lo = keys.amin(dim=(1, 2), keepdim=True)
    hi = keys.amax(dim=(1, 2), keepdim=True)
    step = ((hi - lo) / (2**bits - 1)).clamp(min=1e-12)
    return torch.round((keys - lo) / step) * step + lo


def estimated_probs(block: QueryBlock, bits: int | None) -> Float[Tensor, "b h q key"]:
    """The attention over the visible keys computed against quantised keys (exact: None)."""
    if bits is None:
        return torch.softmax(block.scores.masked_fill(~block.allowed, -math.inf), dim=-1)
    n = block.scores.shape[-1]
    keys = quantised(block.keys, bits)[:, :, :n]
    scores = capped(torch.einsum("bhqd,bhkd->bhqk", block.query, keys) * block.scale, block.softcap)
    return torch.softmax(scores.masked_fill(~block.allowed, -math.inf), dim=-1)


class EstimatedTopP(Probe):
    """Top-p counts on quantised keys at `masses`: per query (`estimated` [b, h, q, mass]) or, with
    `first` set, the sum over queries from `first` on of count / visible (`estimated_share`
    [b, h, mass])."""

    def __init__(
        self, masses: tuple[float, ...], bits: int | None, first: int | None = None,
        with_entropy: bool = False,
    ) -> None:  # fmt: skip
        self.masses = masses
        self.bits = bits
        self.first = first
        self.with_entropy = with_entropy
        self.summed = frozenset({"estimated_share"})

    def __call__(self, block: QueryBlock) -> dict[str, Tensor]:
        probs = estimated_probs(block, self.bits)
        masses = torch.tensor(self.masses, dtype=torch.float32, device=probs.device)
        counts = mass_counts(probs, block.always, block.visible, masses)
        out = {"entropy": entropy(block.probs)} if self.with_entropy else {}
        if self.first is None:
            return {**out, "estimated": counts}
        keep = block.positions >= self.first
        share = counts[:, :, keep].double() / block.visible[keep, None].double()
        return {**out, "estimated_share": share.sum(2)}
