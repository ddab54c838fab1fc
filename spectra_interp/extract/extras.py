"""Per-token statistics of the sampled queries that need their logits (span, temperature), read
from the query and keys that meet in q·k, in the same forward pass as ‖q‖ and H."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.metrics import query_extras, visible_keys

# Sampled queries per block of `layer_extras`, by device type. CPU: 16, small enough that a block's
# logits and the temporaries made from them stay near the core's cache and the blocks follow the
# causal triangle closely: the 256 sampled queries' extras took 0.78, 0.61 and 0.72 s per window
# in blocks of 8, 16 and 32 (SmolLM2, 1536 tokens, 2 cores, median of 4 interleaved rounds).
# Elsewhere (a GPU): large blocks, as every block costs kernel launches (not measured: no GPU lent).
EXTRAS_BLOCK = {"cpu": 16}
EXTRAS_BLOCK_ELSEWHERE = 256


def extras_block(device: torch.device) -> int:
    """Sampled queries per block of `layer_extras` on `device` (`EXTRAS_BLOCK`)."""
    return EXTRAS_BLOCK.get(device.type, EXTRAS_BLOCK_ELSEWHERE)


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
    block: int | None = None,
) -> dict[str, Tensor]:
    """The extras of one layer for the requested queries, on the CPU.

    The sampled positions are taken in increasing order, `block` at a time, each block against
    only the keys its queries can see (from the earliest key inside the window of its first
    query to its last query), as the entropy reads only the causal triangle; the results come
    back in the request's order. `block`: queries per block (default `extras_block`)."""
    positions = request.positions.to(q.device)
    block = block or extras_block(q.device)
    order = positions.argsort(dim=-1)
    ordered = positions.gather(-1, order)
    n_keys = k.shape[2]
    blocks: list[dict[str, Tensor]] = []
    for i0 in range(0, ordered.shape[1], block):
        rows = ordered[:, i0 : i0 + block]
        lo = max(int(rows.min()) - window + 1, 0) if window else 0
        hi = min(int(rows.max()) + 1, n_keys)
        logits = sampled_logits(q, k[:, :, lo:hi], rows, scale)
        key = torch.arange(lo, hi, device=q.device)
        allowed = key <= rows[..., None]
        if window:
            allowed &= rows[..., None] - key < window
        blocks.append(
            query_extras(
                logits, allowed[:, None], softcap=softcap, scales=request.scales, mass=request.mass
            )
        )
    back = order.argsort(dim=-1)
    out = {}
    for name in blocks[0]:
        joined = torch.cat([b[name] for b in blocks], dim=2)
        index = back[:, None, :].expand(*joined.shape[:2], -1)
        if joined.dim() == 4:
            index = index[..., None].expand_as(joined)
        out[name] = joined.gather(2, index).cpu()
    return out


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
