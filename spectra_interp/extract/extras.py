"""Per-token statistics of the sampled queries that need their logits (span, temperature), read
from the query and keys that meet in q·k, in the same forward pass as ‖q‖ and H."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.metrics import query_extras, visible_keys

CAP_EDGE = 1 - 1e-7  # tanh saturates in fp32 past this; atanh of it is finite

# Names of the per-token extras and whether each has a trailing axis of query scales.
EXTRAS = {"max_attn": False, "k_eff": False, "gain": False, "scaled_entropy": True}


@dataclass(frozen=True)
class SampleRequest:
    """Which queries of each window get the extras, and their settings."""

    positions: Int[Tensor, "batch k"]
    scales: tuple[float, ...]
    mass: float


def sampled_logits(
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b kv s d"],
    positions: Int[Tensor, "b k"],
    scale: float,
) -> Float[Tensor, "b h k s"]:
    """scale · q·k of the sampled queries against every key, in fp32, without repeating the
    keys of a grouped-query layer."""
    b, h = q.shape[:2]
    rows = q[torch.arange(b, device=q.device)[:, None], :, positions.to(q.device)]
    rows = rearrange(rows, "b k (kv g) d -> b kv g k d", kv=k.shape[1])
    logits = torch.einsum("bvgkd,bvsd->bvgks", rows.float(), k.float()) * scale
    return rearrange(logits, "b kv g k s -> b (kv g) k s")


def layer_extras(
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b kv s d"],
    request: SampleRequest,
    *,
    scale: float,
    softcap: float | None,
    window: int | None,
) -> dict[str, Tensor]:
    """The extras of one layer for the requested queries, on the CPU."""
    logits = sampled_logits(q, k, request.positions, scale)
    allowed = visible_keys(request.positions.to(q.device), k.shape[2], window)[:, None]
    out = query_extras(logits, allowed, softcap=softcap, scales=request.scales, mass=request.mass)
    return {name: value.cpu() for name, value in out.items()}


def extras_from_scores(
    scores: Float[Tensor, "b h t s"],
    request: SampleRequest,
    *,
    softcap: float | None,
    window: int | None,
) -> dict[str, Tensor]:
    """The extras from the scores a layer's softmax sees (TransformerLens' hook_attn_scores:
    scaled, soft-capped, masked): the pre-cap logits are cap·atanh(s/cap) on a capped layer."""
    positions = request.positions.to(scores.device)
    rows = scores[torch.arange(scores.shape[0], device=scores.device)[:, None], :, positions]
    rows = rearrange(rows, "b k h s -> b h k s").float()
    if softcap:
        rows = softcap * torch.atanh((rows / softcap).clamp(-CAP_EDGE, CAP_EDGE))
    allowed = visible_keys(positions, scores.shape[-1], window)[:, None]
    rows = rows.masked_fill(~allowed, 0.0)
    out = query_extras(rows, allowed, softcap=softcap, scales=request.scales, mass=request.mass)
    return {name: value.cpu() for name, value in out.items()}
