"""The masked forward: each query attends only to the keys its arm keeps, in every layer at once.

The TransformerLens bridge never calls the model's attention function, so, as in
`extract.fused`, the wrapped transformers model runs itself (the full causal LM, for next-token
logits) with `spectra_budget` as its attention function (`models.attention.CustomAttention`).
One function serves the dense reference and every arm, over blocks of queries, in fp32:

1. scores s = scale · q·k, soft-capped first where the model caps them (Gemma-2);
2. the visible keys: causal, inside the layer's sliding window, and inside the model's own mask;
3. the kept keys: with a count per query, the always-kept keys (the first `sink` tokens, the
   `recent` most recent) and then the highest scores (exact top-k), or for the recency arm the
   most recent keys; without counts, every visible key;
4. the softmax over the kept keys only.

A query that keeps every visible key gets exactly the dense computation, so an arm at budget 1 is
the dense pass bit for bit. On the way the function records ‖q‖, the keys kept, their union over
each GQA group, and (dense passes) each query's keys at given masses (or a reduction of them).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from spectra_interp.metrics import MASS_SLACK, capped, visible_keys
from spectra_interp.models.architecture import AttentionSpec
from spectra_interp.models.attention import CustomAttention, allowed_mask, repeat_kv
from spectra_interp.models.load import spec_of

NAME = "spectra_budget"
QUERY_BLOCK = 256
SCORE, RECENCY = "score", "recency"


def always_kept(
    positions: Int[Tensor, " q"], n_keys: int, sink: int, recent: int
) -> Bool[Tensor, "q key"]:
    """The keys every arm keeps: the window's first `sink` tokens and the `recent` most recent
    keys (the query's own included); intersect with the visible keys before use."""
    key = torch.arange(n_keys, device=positions.device)
    return (key < sink) | (key > positions[:, None] - recent)


def keep_top(
    priority: Float[Tensor, "b h q key"],
    allowed: Bool[Tensor, "b h q key"],
    counts: Int[Tensor, "b h q"],
) -> Bool[Tensor, "b h q key"]:
    """The `counts` visible keys of highest priority per query (ties: the earlier key)."""
    order = priority.masked_fill(~allowed, -math.inf).argsort(dim=-1, descending=True, stable=True)
    rank_kept = torch.arange(priority.shape[-1], device=priority.device) < counts[..., None]
    keep = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return keep.scatter_(-1, order, rank_kept) & allowed


def mass_counts(
    p: Float[Tensor, "b h q key"],
    first: Bool[Tensor, "b h q key"] | None,
    visible: Int[Tensor, " q"],
    masses: Float[Tensor, " mass"],
) -> Int[Tensor, "b h q mass"]:
    """The fewest keys, the `first` keys (if any) before the others and then by weight, whose
    weights sum to at least each mass (every visible key at mass 1). Without `first` this is
    k_p, the sweep's k_eff at mass p; with the always-kept keys first, the oracle's count."""
    order_by = p if first is None else p + 2.0 * first
    cumulative = p.gather(-1, order_by.argsort(dim=-1, descending=True)).cumsum(-1).contiguous()
    wanted = (masses.to(p.dtype) - MASS_SLACK).expand(*cumulative.shape[:-1], -1).contiguous()
    counts = torch.searchsorted(cumulative, wanted) + 1
    if first is not None:
        counts = torch.maximum(counts, first.sum(-1, keepdim=True))
    counts = torch.minimum(counts, visible[:, None])
    return torch.where(masses >= 1, visible[:, None], counts)


# (counts at masses [b, h, q, mass], positions [q], visible [q], ‖q‖ [b, h, q]) -> a summary of
# one block of queries, summed over blocks.
Reducer = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class QueryBlock:
    """What a probe sees of one block of queries in one layer (fp32, keys repeated per query
    head): the capped scores, the attention over the kept keys, the masks and the layer's keys
    and values (every key of the window, for probes that need the whole layer)."""

    layer: int
    rows: slice
    positions: Int[Tensor, " q"]
    visible: Int[Tensor, " q"]
    scores: Float[Tensor, "b h q key"]
    probs: Float[Tensor, "b h q key"]
    allowed: Bool[Tensor, "b h q key"]
    always: Bool[Tensor, "b h q key"]
    query: Float[Tensor, "b h q d"]
    keys: Float[Tensor, "b h s d"]
    values: Float[Tensor, "b h s e"]
    scale: float
    softcap: float | None


class Probe:
    """Extra per-query quantities read from each block (`QueryBlock` -> name -> [b, h, q, ...]),
    concatenated over blocks; the names in `summed` are summed over blocks instead."""

    summed: frozenset[str] = frozenset()

    def __call__(self, block: QueryBlock) -> dict[str, Tensor]:
        raise NotImplementedError


@dataclass
class MaskState:
    """One forward pass: what each query keeps, and what is gathered per layer (on the CPU)."""

    modules: dict[int, int]  # id(attention module) -> layer
    spec: AttentionSpec
    sink: int
    recent: int
    counts: Int[Tensor, "b layer head pos"] | None = None  # None: every visible key
    order: str = SCORE
    masses: tuple[float, ...] = ()  # keys holding these masses (dense passes)
    always_first: bool = True  # count the always-kept keys first (the oracle) or not (k_p)
    reducer: Reducer | None = None  # keep a summary of the counts, not the counts per query
    keep_masks: bool = False
    probe: Probe | None = None
    probed: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    qnorm: dict[int, Tensor] = field(default_factory=dict)
    kept: dict[int, Tensor] = field(default_factory=dict)
    union: dict[int, Tensor] = field(default_factory=dict)
    by_mass: dict[int, Tensor] = field(default_factory=dict)
    masks: dict[int, Tensor] = field(default_factory=dict)

    def stacked(self, name: str) -> Tensor:
        """A gathered quantity stacked over layers: [b, layer, ...]."""
        per_layer = getattr(self, name)
        return torch.stack([per_layer[layer] for layer in range(self.spec.n_layers)], dim=1)

    def probed_stack(self, name: str) -> Tensor:
        """A probe's quantity stacked over layers: [b, layer, ...]."""
        return torch.stack([self.probed[layer][name] for layer in range(self.spec.n_layers)], 1)


def mask_state(model: Any, sink: int, recent: int, **kwargs: Any) -> MaskState:
    """A pass over a bridge loaded with `load_model`."""
    modules = {id(block.attn.original_component): i for i, block in enumerate(model.blocks)}
    return MaskState(modules=modules, spec=spec_of(model), sink=sink, recent=recent, **kwargs)


def _block_keep(
    run: MaskState,
    layer: int,
    rows: slice,
    s: Float[Tensor, "b h q key"],
    allowed: Bool[Tensor, "b h q key"],
    always: Bool[Tensor, "b h q key"],
    visible: Int[Tensor, " q"],
) -> Bool[Tensor, "b h q key"]:
    if run.counts is None:
        return allowed
    counts = run.counts[:, layer, :, rows].to(s.device)
    if bool((counts >= visible).all()):
        return allowed
    if run.order == RECENCY:
        key = torch.arange(s.shape[-1], device=s.device, dtype=s.dtype)
        priority = torch.where(key < run.sink, math.inf, key).expand_as(s)
    else:
        priority = s.masked_fill(always, math.inf)
    return keep_top(priority, allowed, counts)


def budget_attention(
    run: MaskState,
    module: nn.Module,
    query: Float[Tensor, "b h t d"],
    key: Float[Tensor, "b kv s d"],
    value: Float[Tensor, "b kv s e"],
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Float[Tensor, "b t h e"], None]:
    """transformers' attention-function interface (the active pass first): the layer's output
    over the kept keys only."""
    layer = run.modules[id(module)]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    softcap = kwargs.get("softcap")
    n_kv = key.shape[1]
    k, v = repeat_kv(key, query.shape[1] // n_kv), repeat_kv(value, query.shape[1] // n_kv)
    n_q, n_k = query.shape[2], k.shape[2]
    offset = n_k - n_q
    model_allowed = allowed_mask(attention_mask, n_q, n_k, query.device)
    window = run.spec.windows[layer]
    masses = torch.tensor(run.masses, dtype=torch.float32, device=query.device)
    out = torch.empty(*query.shape[:-1], v.shape[-1], dtype=query.dtype, device=query.device)
    qnorm = torch.linalg.vector_norm(query.float(), dim=-1)
    gathered: dict[str, list[Tensor]] = {name: [] for name in ("kept", "union", "by_mass", "masks")}
    probed: dict[str, list[Tensor]] = {}
    for i0 in range(0, n_q, QUERY_BLOCK):
        i1 = min(i0 + QUERY_BLOCK, n_q)
        keys = i1 + offset
        positions = torch.arange(i0, i1, device=query.device) + offset
        allowed = visible_keys(positions, keys, window)[None, None]
        allowed = allowed & model_allowed[..., i0:i1, :keys]
        always = always_kept(positions, keys, run.sink, run.recent) & allowed
        visible = allowed[0, 0].sum(-1)
        s = torch.einsum("bhqd,bhkd->bhqk", query[:, :, i0:i1].float(), k[:, :, :keys].float())
        s = capped(s * scale, softcap)
        keep = _block_keep(run, layer, slice(i0, i1), s, allowed, always, visible)
        p = torch.softmax(s.masked_fill(~keep, -math.inf), dim=-1)
        out[:, :, i0:i1] = torch.einsum("bhqk,bhke->bhqe", p, v[:, :, :keys].float()).to(out.dtype)
        keep = keep.expand_as(s)
        gathered["kept"].append(keep.sum(-1).cpu())
        union = rearrange(keep, "b (kv g) q k -> b kv g q k", kv=n_kv).any(2).sum(-1)
        gathered["union"].append(union.cpu())
        if run.masses:
            first = always.expand_as(p) if run.always_first else None
            counts = mass_counts(p, first, visible, masses)
            reducer = run.reducer
            if reducer is None:
                gathered["by_mass"].append(counts.cpu())
            else:
                reduced = reducer(counts, positions, visible, qnorm[:, :, i0:i1])
                gathered["by_mass"].append(reduced.cpu())
        if run.probe is not None:
            view = QueryBlock(
                layer, slice(i0, i1), positions, visible, s, p, allowed.expand_as(s),
                always.expand_as(s), query[:, :, i0:i1].float(), k.float(), v.float(), scale,
                softcap,
            )  # fmt: skip
            for name, value in run.probe(view).items():
                probed.setdefault(name, []).append(value.cpu())
        if run.keep_masks:
            gathered["masks"].append(torch.nn.functional.pad(keep, (0, n_k - keys)).cpu())
    run.qnorm[layer] = qnorm.cpu()
    if run.probe is not None:
        summed = run.probe.summed
        run.probed[layer] = {
            name: functools.reduce(operator.add, blocks)
            if name in summed
            else torch.cat(blocks, dim=2)
            for name, blocks in probed.items()
        }
    for name, blocks in gathered.items():
        if blocks:
            reduced = name == "by_mass" and run.reducer is not None
            getattr(run, name)[layer] = sum(blocks) if reduced else torch.cat(blocks, dim=2)
    return rearrange(out, "b h t e -> b t h e").contiguous(), None


BUDGET: CustomAttention[MaskState] = CustomAttention(
    NAME, budget_attention, "spectra_interp.budget.mask"
)


@overload
def forward(
    model: Any, tokens: Tensor, run: MaskState, logits: Literal[True] = True
) -> Float[Tensor, "b t vocab"]: ...


@overload
def forward(model: Any, tokens: Tensor, run: MaskState, logits: Literal[False]) -> None: ...


@torch.inference_mode()
def forward(
    model: Any, tokens: Int[Tensor, "b t"], run: MaskState, logits: bool = True
) -> Float[Tensor, "b t vocab"] | None:
    """One teacher-forced forward of the wrapped model under `run`; the next-token logits (or
    None with `logits=False`, which stops before the unembedding)."""
    with BUDGET.active(model, run) as hf_model:
        if logits:
            return hf_model(input_ids=tokens, use_cache=False).logits
        hf_model.base_model(input_ids=tokens, use_cache=False)
        return None
