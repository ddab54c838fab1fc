"""Pure tensor functions: query norm, attention entropy (nats, fp32) and its ceiling log(n_keys)."""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

ENTROPY_BLOCK = 256


def query_norm(q: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch head pos"]:
    """L2 norm of each query vector in fp32 (RoPE rotates q, so the norm is the same after it)."""
    return rearrange(torch.linalg.vector_norm(q.float(), dim=-1), "b p h -> b h p")


def attention_entropy(
    pattern: Float[Tensor, "batch head query key"], block: int = ENTROPY_BLOCK
) -> Float[Tensor, "batch head query"]:
    """Shannon entropy -sum_j p_j log p_j of each query's attention, in nats, computed in fp32.

    Causal patterns are zero above the diagonal, so a block of queries [i0, i1) only reads the
    keys [0, i1) it can see: about half the work of the full square, with identical results
    (0 log 0 = 0). Works for fp16 patterns without overflow because each block is cast to fp32.
    """
    n_query, n_key = pattern.shape[-2], pattern.shape[-1]
    offset = n_key - n_query
    out = torch.empty(pattern.shape[:-1], dtype=torch.float32, device=pattern.device)
    for i0 in range(0, n_query, block):
        i1 = min(i0 + block, n_query)
        keys = min(n_key, i1 + offset)
        out[..., i0:i1] = torch.special.entr(pattern[..., i0:i1, :keys].float()).sum(-1)
    return out


def keys_seen(n_pos: int, sliding_window: int | None = None) -> Int[Tensor, " pos"]:
    """Number of keys position t attends to under causal masking: t + 1, capped by a window."""
    n_keys = torch.arange(1, n_pos + 1, dtype=torch.int64)
    return n_keys.clamp(max=sliding_window) if sliding_window else n_keys


def max_entropy(n_keys: Int[Tensor, " pos"]) -> Float[Tensor, " pos"]:
    """The largest entropy a query over n keys can have: log(n) (uniform attention)."""
    return torch.log(n_keys.to(torch.float64)).to(torch.float32)
