"""Pure tensor functions: query norm, attention entropy (nats, fp32) and its ceiling log(n_keys)."""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
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


def visible_keys(
    positions: Int[Tensor, "*batch k"], n_keys: int, window: int | None
) -> Bool[Tensor, "*batch k key"]:
    """Which keys each query position sees: causal, and within the window on a sliding layer."""
    key = torch.arange(n_keys, device=positions.device)
    allowed = key <= positions[..., None]
    if window:
        allowed &= positions[..., None] - key < window
    return allowed


def capped(logits: Tensor, softcap: float | None) -> Tensor:
    """Soft-capped logits c·tanh(s/c) (Gemma-2); the logits themselves without a cap."""
    return torch.tanh(logits / softcap) * softcap if softcap else logits


# A small slack so that a mass of 1.0 is reached despite rounding of the sum of the weights.
MASS_SLACK = 1e-6


# k_eff reads the top weights of a row by `torch.topk` over these prefix lengths before it sorts
# the whole row: most rows reach the mass within the first few keys.
KEFF_PREFIXES = (32, 256)


def keys_for_mass(p: Float[Tensor, "... key"], mass: float) -> Int[Tensor, "..."]:
    """k_eff: the fewest keys whose weights sum to at least `mass` (weights sorted, largest first).
    Weights of keys a query cannot see are 0 and never counted.

    The largest weights come from `torch.topk` over a bounded prefix, widened (and at last a full
    sort) only for the rows whose prefix falls short of the mass: the same sorted values and the
    same cumulative sums as a full sort, without sorting every row."""
    goal = mass - MASS_SLACK
    n = p.shape[-1]
    flat = p.reshape(-1, n)
    counts = torch.empty(flat.shape[0], dtype=torch.int64, device=p.device)
    todo = torch.arange(flat.shape[0], device=p.device)
    for prefix in (*[c for c in KEFF_PREFIXES if c < n], n):
        rows = flat if todo.numel() == flat.shape[0] else flat[todo]
        top = torch.topk(rows, prefix, dim=-1, sorted=True).values.cumsum(-1)
        reached = (top[:, -1] >= goal) if prefix < n else torch.ones_like(todo, dtype=torch.bool)
        counts[todo[reached]] = (top[reached] < goal).sum(-1) + 1
        todo = todo[~reached]
        if todo.numel() == 0:
            break
    return counts.reshape(p.shape[:-1])


# Added to the logits of keys a query cannot see: finite, so that exp gives exactly 0 and 0 times
# the shifted logit stays 0 (no -inf, no NaN), and far below any logit.
HIDDEN = -1e30


def _weights_and_entropy(s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From logits s (hidden keys at HIDDEN): t = s - max s <= 0, the unnormalised weights
    e = exp(t) (exactly 0 where hidden), Z = sum e >= 1 and H = log Z - E_p[t], a sum of two
    non-negative terms (no cancellation)."""
    t = s - s.amax(-1, keepdim=True)
    e = t.exp()
    z = e.sum(-1)
    return t, e, z, torch.log(z) - (e * t).sum(-1) / z


def query_extras(
    logits: Float[Tensor, "batch head k key"],
    allowed: Bool[Tensor, "batch 1 k key"],
    *,
    softcap: float | None,
    scales: tuple[float, ...],
    mass: float,
) -> dict[str, Tensor]:
    """Span and temperature statistics of sampled queries from their pre-cap logits
    (scale · q·k), all in fp32:

    - `max_attn`: the largest attention weight (1/Z of the shifted logits); `k_eff`:
      `keys_for_mass(p, mass)`;
    - `scaled_entropy` [..., scale]: H of softmax(cap(alpha · logits)) for each alpha: the query
      scaled by alpha (the cap, where there is one, applied after the scaling, as it is in the
      model), as log Z - E_p[t] of the logits t shifted to a maximum of 0;
    - `gain`: dH/dlog(alpha) at alpha = 1, i.e. -Cov_p(s, ds/dlog alpha) with s the capped
      logits (= -Var_p(s) without a cap).
    """
    z = logits.float()
    hidden = torch.zeros(allowed.shape, dtype=z.dtype, device=z.device).masked_fill_(
        ~allowed, HIDDEN
    )

    def at(alpha: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _weights_and_entropy(capped(alpha * z, softcap) + hidden)

    s, e, total, entropy = at(1.0)
    scaled = [entropy if alpha == 1.0 else at(alpha)[3] for alpha in scales]
    p, max_attn = e / total[..., None], 1.0 / total
    ds = z * (1 - torch.tanh(z / softcap) ** 2) if softcap else s
    mean_s, mean_ds = (p * s).sum(-1, keepdim=True), (p * ds).sum(-1, keepdim=True)
    # p first: hidden keys have p = 0 exactly, so their huge shifted logits contribute 0
    gain = -(p * (s - mean_s) * (ds - mean_ds)).sum(-1)
    return {
        "max_attn": max_attn,
        "k_eff": keys_for_mass(p, mass),
        "scaled_entropy": torch.stack(scaled, dim=-1),
        "gain": gain,
    }
