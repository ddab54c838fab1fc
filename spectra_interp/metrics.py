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


# k_eff bins each row's keys by log weight below the row's largest, KEFF_BINS_PER_NAT bins per nat
# (the last bin holding everything further down), so that only the keys of the one bin where the
# mass is crossed are sorted.
KEFF_BINS_PER_NAT = 16
KEFF_BINS = 256


def keys_for_mass(
    p: Float[Tensor, "... key"],
    mass: float,
    log_weight: Float[Tensor, "... key"] | None = None,
) -> Int[Tensor, "..."]:
    """k_eff: the fewest keys whose weights sum to at least `mass` (weights sorted, largest first).
    Weights of keys a query cannot see are 0 and never counted. `log_weight`: log p up to a
    constant per row with maximum 0 (the shifted logits; computed from p if not given).

    Without sorting whole rows: a histogram of each row's mass over bins of log weight finds the
    bin where the running mass (largest weights first) crosses `mass`; the keys of the bins above
    are all counted, and only the keys of that bin are sorted. Sums in float64: the count of a
    full sort whose running sum is exact."""
    goal = mass - MASS_SLACK
    n = p.shape[-1]
    flat = p.reshape(-1, n).double()
    if log_weight is None:
        log_weight = torch.log(flat) - torch.log(flat.amax(-1, keepdim=True))
    bins = (log_weight.reshape(-1, n) * -KEFF_BINS_PER_NAT).clamp_(0, KEFF_BINS - 1).long()
    crossing, above, counted = _crossing_bin(flat, bins, goal)
    taken = _keys_for_rest(flat, bins == crossing[:, None], goal - above)
    return (counted + taken).reshape(p.shape[:-1])


def _crossing_bin(
    p: Float[Tensor, "row key"], bins: Int[Tensor, "row key"], goal: float
) -> tuple[Int[Tensor, " row"], Float[Tensor, " row"], Int[Tensor, " row"]]:
    """Per row: the first bin (largest weights first) where the running mass reaches `goal`
    (the last bin if rounding keeps it short), the mass of the bins before it and their keys."""
    per_bin = torch.zeros(p.shape[0], KEFF_BINS, dtype=torch.float64, device=p.device)
    running = per_bin.scatter_add_(1, bins, p).cumsum_(1)
    wanted = running.new_full((p.shape[0], 1), goal)
    crossing = torch.searchsorted(running, wanted)[:, 0].clamp_(max=KEFF_BINS - 1)
    last = (crossing - 1).clamp(min=0)[:, None]
    above = torch.where(crossing > 0, running.gather(1, last)[:, 0], 0)
    return crossing, above, (bins < crossing[:, None]).sum(1)


def _keys_for_rest(
    p: Float[Tensor, "row key"], inside: Bool[Tensor, "row key"], rest: Float[Tensor, " row"]
) -> Int[Tensor, " row"]:
    """Per row, the fewest of its `inside` keys (largest first) whose weights sum to `rest`
    (all of them if they fall short): one sort of just those keys, grouped by row."""
    row, col = inside.nonzero(as_tuple=True)
    values = p[row, col]
    order = torch.argsort(values, descending=True, stable=True)
    order = order[torch.argsort(row[order], stable=True)]
    row, values = row[order], values[order]
    sizes = torch.bincount(row, minlength=p.shape[0])
    running = values.cumsum(0)
    start = torch.cumsum(sizes, 0) - sizes
    before = torch.where(start > 0, running[(start - 1).clamp(min=0)], 0)[row]
    short = ((running - before) < rest[row]).long()
    taken = torch.zeros_like(sizes).scatter_add_(0, row, short)
    return torch.minimum(taken + 1, sizes)


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
    return t, e, z, torch.log(z) - _dot(e, t) / z


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """sum_k a_k b_k over the last axis (one batched product, no temporary)."""
    return torch.einsum("...k,...k->...", a, b)


def _scaled_weights(
    t: Float[Tensor, "... key"], alphas: tuple[float, ...]
) -> Float[Tensor, "... alpha key"]:
    """exp(alpha · t) for each alpha > 0 (1 among them), from the shifted logits t = s - max s:
    the logits alpha · s shift by their maximum alpha · max s, so theirs are alpha · t. One exp
    for alpha = 1; a scale twice one already made is its square, half of one its square root
    (0.5, 1, 2; 1/sqrt2, sqrt2), any other one exp."""
    out = t.new_empty(*t.shape[:-1], len(alphas), t.shape[-1])
    made: dict[float, Tensor] = {}
    for alpha in sorted(alphas, key=lambda a: (a != 1.0, a)):
        dest = out[..., alphas.index(alpha), :]
        if alpha / 2 in made:
            torch.mul(made[alpha / 2], made[alpha / 2], out=dest)
        elif alpha * 2 in made:
            torch.sqrt(made[alpha * 2], out=dest)
        else:
            torch.exp(torch.mul(t, alpha), out=dest)
        made[alpha] = dest
    return out


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
      model), as log Z - E_p[t] of the logits t shifted to a maximum of 0; without a cap, all
      scales from one set of weights (`_scaled_weights`), E_p[alpha · t] = alpha · E_p[t];
    - `gain`: dH/dlog(alpha) at alpha = 1, i.e. -Cov_p(s, ds/dlog alpha) with s the capped
      logits (= -Var_p(s) without a cap).
    """
    z = logits.float()
    if softcap:
        return _capped_extras(z, allowed, softcap, scales, mass)
    t = torch.where(allowed, z, HIDDEN)
    t = t - t.amax(-1, keepdim=True)
    alphas = scales if 1.0 in scales else (*scales, 1.0)
    weights = _scaled_weights(t, alphas)
    sums = weights.sum(-1)
    means = torch.einsum("...ak,...k->...a", weights, t) / sums  # E_p[t] at each alpha
    entropy = torch.log(sums) - torch.tensor(alphas, device=t.device) * means
    one = alphas.index(1.0)
    e, total = weights[..., one, :], sums[..., one]
    centred = t - means[..., one, None]
    return {
        "max_attn": 1.0 / total,
        "k_eff": keys_for_mass(e / total[..., None], mass, t),
        "scaled_entropy": entropy[..., : len(scales)],
        # e first: hidden keys have e = 0 exactly, so their huge shifted logits contribute 0
        "gain": -_dot(e * centred, centred) / total,
    }


def _capped_extras(
    z: Float[Tensor, "... key"],
    allowed: Bool[Tensor, "... key"],
    softcap: float,
    scales: tuple[float, ...],
    mass: float,
) -> dict[str, Tensor]:
    """`query_extras` on a soft-capped layer: the cap bends alpha · z, so each scale is its own
    softmax, and ds/dlog alpha = z (1 - tanh(z / cap)^2)."""
    at = {
        a: _weights_and_entropy(torch.where(allowed, capped(a * z, softcap), HIDDEN))
        for a in dict.fromkeys((*scales, 1.0))
    }
    s, e, total, _ = at[1.0]
    scaled = [at[a][3] for a in scales]
    ds = torch.where(allowed, z * (1 - torch.tanh(z / softcap) ** 2), 0.0)
    mean_s, mean_ds = _dot(e, s) / total, _dot(e, ds) / total
    gain = -_dot(e * (s - mean_s[..., None]), ds - mean_ds[..., None]) / total
    return {
        "max_attn": 1.0 / total,
        "k_eff": keys_for_mass(e / total[..., None], mass, s),
        "scaled_entropy": torch.stack(scaled, dim=-1),
        "gain": gain,
    }
