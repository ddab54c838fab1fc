"""The fused method: ‖q‖ and exact H inside the wrapped transformers model's own attention
function, at close to the cost of the model's forward pass, without a T x T pattern.

Since sum_j p_j s_j = scale * q · (sum_j p_j k_j), the entropy of one query's attention is

    H = logsumexp(s) - scale * q · (P K),

so one fused attention kernel that returns its logsumexp, run with values [V | K], gives the
layer's output P V, the mean key P K and log Z together, in O(T) memory. The query it receives is
the one that meets the keys (after any QK-norm and RoPE), so ‖q‖ is read there too.

Exactness at any logit scale and precision: the difference cancels two numbers that grow with
the logits, so (1) the kernel runs on keys centred per head (K' = K - mean K: every score of a
query moves by one constant, the softmax does not) and in fp32, a half-precision model's layer
output then coming from its own eager attention; (2) a measured bound on each row's rounding
error (`rounding_estimate`) sends the rows that may be off by more than `entropy_tolerance`, and
any that round outside [0, log(keys seen)], to a float64 recomputation from the same q and k.
Nothing is clamped. The plan is recorded per layer in config.json (`exactness_plan`).

Kernels (recorded per layer in config.json):
- `flash_cpu`: PyTorch's CPU flash-attention op, which needs one head size for Q, K and V, so
  Q and K are zero-padded to [Q | 0], [K | 0] (same scores) beside values [V | K];
- `flex`: FlexAttention (compiled on CUDA, eager elsewhere), which takes values of another
  head size and returns the logsumexp;
- `exact`: a blocked computation of the scores, for layers a fused kernel cannot reproduce
  (logit soft-capping: the cap bends the scores after q·k), and the reference for the others.

The TransformerLens bridge reimplements attention and never calls the model's attention
function, so this method runs the wrapped transformers model itself (`models.attention`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from spectra_interp.extract.extras import SampleRequest, layer_extras
from spectra_interp.metrics import capped, visible_keys
from spectra_interp.models.architecture import AttentionSpec
from spectra_interp.models.attention import CustomAttention, allowed_mask, repeat_kv

NAME = "spectra_fused"
KERNELS = ("flash_cpu", "flex", "exact")
EXACT_BLOCK = 256
EXACT_TOLERANCE = 5e-5  # nats: a fused entropy that may be further off is recomputed exactly
# rounding_estimate's multiple of the unit roundoff: twice the largest error/roundoff ratio measured
# (4.1 on SmolLM2 in fp32, 2.5 on random scores of every scale; tests/extract/test_fused.py).
ERROR_FACTOR = 8.0
SOFTCAP_REASON = "logit soft-capping bends the scores after q·k"


@dataclass
class Collector:
    """What one forward pass of the fused method gathers, per layer (fp32, on the CPU)."""

    modules: dict[int, int]  # id(attention module) -> layer index
    spec: AttentionSpec
    kernel: str
    request: SampleRequest | None = None
    qnorm: dict[int, Tensor] = field(default_factory=dict)
    entropy: dict[int, Tensor] = field(default_factory=dict)
    extras: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    used: dict[int, str] = field(default_factory=dict)


def exact_attention(
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b h s d"],
    v: Float[Tensor, "b h s e"],
    allowed: Tensor,
    scale: float,
    softcap: float | None,
    block: int = EXACT_BLOCK,
) -> tuple[Float[Tensor, "b h t e"], Float[Tensor, "b h t"]]:
    """Output and entropy over blocks of queries (fp32 math), any mask or soft-cap; rows whose
    fp32 entropy rounds outside [0, log(keys seen)] recomputed in float64."""
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    entropy = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    for i0 in range(0, q.shape[2], block):
        i1 = min(i0 + block, q.shape[2])
        s = torch.einsum("bhqd,bhkd->bhqk", q[:, :, i0:i1].float(), k.float()) * scale
        if softcap:
            s = torch.tanh(s / softcap) * softcap
        s = s.masked_fill(~allowed[..., i0:i1, :], -math.inf)
        log_p = torch.log_softmax(s, dim=-1)
        p = log_p.exp()
        entropy[:, :, i0:i1] = -(p * log_p.nan_to_num(neginf=0.0)).sum(-1)
        out[:, :, i0:i1] = torch.einsum("bhqk,bhke->bhqe", p, v.float()).to(q.dtype)
    ceiling = torch.log(allowed.sum(-1, dtype=torch.float64)).to(torch.float32)
    redo = (entropy < 0) | (entropy > ceiling)
    if bool(redo.any()):
        entropy[redo] = exact_entropy_rows(q, k, allowed, scale, redo, softcap).float()
    return out, entropy


def centred_keys(k: Float[Tensor, "b h s d"], dtype: torch.dtype) -> Float[Tensor, "b h s d"]:
    """Keys minus their mean over the window, per head, in the kernel's dtype: every score of a
    query moves by the same amount (its softmax does not), and log Z and q·(P K) shrink to the
    spread of the scores, so their difference cancels fewer digits."""
    k32 = k.float()
    return (k32 - k32.mean(dim=2, keepdim=True)).to(dtype)


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon: the relative error of one rounding in `dtype`."""
    return torch.finfo(dtype).eps / 2


def entropy_tolerance(dtype: torch.dtype) -> float:
    """The largest rounding error (nats) a fused entropy may carry before its row is recomputed
    exactly: one unit roundoff of the model's dtype (the rounding of one attention weight read in
    that dtype), and `EXACT_TOLERANCE` at least (fp32)."""
    return max(EXACT_TOLERANCE, unit_roundoff(dtype))


def rounding_estimate(
    lse: Float[Tensor, "b h t"],
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b h s d"],
    mean_key: Float[Tensor, "b h t d"],
    scale: float,
) -> Float[Tensor, "b h t"]:
    """A measured bound on the rounding error of H = log Z - scale · q·(P K): `ERROR_FACTOR`
    units of fp32 roundoff of the magnitudes the kernel accumulates (log Z, and ‖q‖ times the
    largest key) plus one unit of the kernel's output dtype on the products q_d (P K)_d."""
    q32 = q.float()
    largest_key = torch.linalg.vector_norm(k.float(), dim=-1).amax(dim=-1)[..., None]
    accumulated = lse.abs() + scale * torch.linalg.vector_norm(q32, dim=-1) * largest_key
    stored = scale * (q32 * mean_key.float()).abs().sum(-1)
    u32, u_out = unit_roundoff(torch.float32), unit_roundoff(mean_key.dtype)
    return ERROR_FACTOR * (u32 * accumulated + u_out * stored)


def exact_entropy_rows(
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b h s d"],
    allowed: Bool[Tensor, "b_or_1 1 t s"] | None,
    scale: float,
    rows: Bool[Tensor, "b h t"],
    softcap: float | None = None,
) -> Float[Tensor, " n"]:
    """The entropy of the queries `rows` selects (in `rows.nonzero()` order) in float64, from
    the scores of the same q and k (soft-capped where the model caps them): the reference a
    kernel's value is replaced by. `allowed` None: causal (each query sees the keys up to its
    own position, the last query the last key), without building the square mask."""
    out = torch.empty(int(rows.sum()), dtype=torch.float64, device=q.device)
    offset = k.shape[2] - q.shape[2]
    done = 0
    for b, h in rows.any(-1).nonzero().tolist():
        positions = rows[b, h].nonzero()[:, 0]
        for r0 in range(0, positions.numel(), EXACT_BLOCK):
            t = positions[r0 : r0 + EXACT_BLOCK]
            if allowed is None:
                seen = visible_keys(t + offset, k.shape[2], None)
            else:
                seen = allowed[b % allowed.shape[0], 0, t]
            keys = int(seen.any(0).nonzero().max()) + 1
            s = capped((q[b, h, t].double() @ k[b, h, :keys].double().T) * scale, softcap)
            s = s.masked_fill(~seen[:, :keys], -math.inf)
            log_p = torch.log_softmax(s, dim=-1)
            out[done : done + t.numel()] = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)
            done += t.numel()
    return out


def entropy_from_kernel(
    lse: Float[Tensor, "b h t"],
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b h s d"],
    centred: Float[Tensor, "b h s d"],
    mean_key: Float[Tensor, "b h t d"],
    n_seen: Int[Tensor, "b_or_1 t"],
    allowed: Callable[[], Bool[Tensor, "b_or_1 1 t s"] | None],
    scale: float,
    tolerance: float,
) -> Float[Tensor, "b h t"]:
    """H = log Z - scale · q·(P K') from a kernel run on centred keys K' (its logsumexp, and its
    output on values K'); each row whose `rounding_estimate` exceeds `tolerance` nats, or whose
    value falls outside [0, log(keys seen)], recomputed exactly (`exact_entropy_rows`, with the
    mask `allowed()` builds; None: causal), so no clamp is needed."""
    entropy = lse.float() - scale * torch.einsum("bhtd,bhtd->bht", q.float(), mean_key.float())
    ceiling = torch.log(n_seen.to(torch.float64)).to(torch.float32)[:, None]
    estimate = rounding_estimate(lse, q, centred, mean_key, scale)
    redo = (estimate > tolerance) | (entropy < 0) | (entropy > ceiling)
    if bool(redo.any()):
        entropy[redo] = exact_entropy_rows(q, k, allowed(), scale, redo).float()
    return entropy


def flash_cpu_attention(
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b h s d"],
    v: Float[Tensor, "b h s d"],
    attention_mask: Tensor | None,
    scale: float,
    tolerance: float = EXACT_TOLERANCE,
) -> tuple[Float[Tensor, "b h t d"], Float[Tensor, "b h t"]]:
    """Output and entropy from one call of the CPU flash op on [Q|0], [K'|0], [V|K'] (K' the
    centred keys), in the dtype of q."""
    d = q.shape[-1]
    n_q, n_k = q.shape[2], k.shape[2]
    mask = allowed = None  # causal: the kernel's own flag, and no square mask for the exact rows
    if attention_mask is None:
        n_seen = (torch.arange(n_q, device=q.device) + n_k - n_q + 1)[None]
    else:
        allowed = allowed_mask(attention_mask, n_q, n_k, q.device)
        n_seen = allowed.sum(-1)[:, 0]
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(
            ~allowed, -math.inf
        )
    # [Q | 0] and [K' | 0] written into zeroed buffers (no separate zero tensors to join)
    padded_q = q.new_zeros(*q.shape[:-1], 2 * d)
    padded_q[..., :d] = q
    padded_k = q.new_zeros(*k.shape[:-1], 2 * d)
    padded_k[..., :d] = centred_keys(k, q.dtype)
    centred = padded_k[..., :d]
    both, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        padded_q, padded_k, torch.cat([v, centred], dim=-1), 0.0, attention_mask is None,
        attn_mask=mask, scale=scale,
    )  # fmt: skip
    del padded_q
    entropy = entropy_from_kernel(
        lse, q, k, centred, both[..., d:], n_seen, lambda: allowed, scale, tolerance
    )  # fmt: skip
    return both[..., :d], entropy


@contextlib.contextmanager
def _quiet_flex() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without torch.compile")
        yield


def flex_attention_call(
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b h s d"],
    v: Float[Tensor, "b h s d"],
    window: int | None,
    scale: float,
    tolerance: float = EXACT_TOLERANCE,
) -> tuple[Float[Tensor, "b h t d"], Float[Tensor, "b h t"]]:
    """Output and entropy from FlexAttention on keys K' (centred) with values [V | K'], in the
    dtype of q (compiled on CUDA)."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    n_q, n_k = q.shape[2], k.shape[2]
    offset = n_k - n_q

    def mask_mod(b: Any, h: Any, qi: Any, ki: Any) -> Any:
        causal = ki <= qi + offset
        return causal & (qi + offset - ki < window) if window else causal

    block_mask = create_block_mask(mask_mod, None, None, n_q, n_k, device=q.device)
    centred = centred_keys(k, q.dtype)
    run = _compiled_flex() if q.device.type == "cuda" else flex_attention
    with _quiet_flex():
        out, aux = run(
            q, centred, torch.cat([v, centred], dim=-1), block_mask=block_mask, scale=scale,
            return_aux=AuxRequest(lse=True),
        )  # fmt: skip
    d = q.shape[-1]
    positions = torch.arange(n_q, device=q.device) + offset
    n_seen = (positions + 1).clamp(max=window or n_k)[None]
    assert aux.lse is not None, "return_aux asks for the log-sum-exp"
    entropy = entropy_from_kernel(
        aux.lse, q, k, centred, out[..., d:], n_seen,
        lambda: visible_keys(positions, n_k, window)[None, None], scale, tolerance,
    )  # fmt: skip
    return out[..., :d], entropy


_COMPILED: list[Any] = []


def _compiled_flex() -> Any:
    if not _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED[0]


def attention_forward(
    collector: Collector,
    module: nn.Module,
    query: Float[Tensor, "b h t d"],
    key: Float[Tensor, "b kv s d"],
    value: Float[Tensor, "b kv s d"],
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Float[Tensor, "b t h d"], None]:
    """transformers' attention-function interface (the active collector first): the layer's
    output, and on the way ‖q‖ and H into the collector."""
    layer = collector.modules[id(module)]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    softcap = kwargs.get("softcap")
    kernel = "exact" if softcap else collector.kernel
    tolerance = entropy_tolerance(query.dtype)
    dtype = kernel_dtype(query.dtype)
    q_in, k_in, v_in = query.to(dtype), k.to(dtype), v.to(dtype)
    if kernel == "flash_cpu":
        out, entropy = flash_cpu_attention(q_in, k_in, v_in, attention_mask, scale, tolerance)
    elif kernel == "flex":
        window = kwargs.get("sliding_window")
        out, entropy = flex_attention_call(q_in, k_in, v_in, window, scale, tolerance)
    else:
        allowed = allowed_mask(attention_mask, query.shape[2], k.shape[2], query.device)
        out, entropy = exact_attention(query, k, v, allowed, scale, softcap)
    if dtype != query.dtype and kernel != "exact":
        out = model_own_attention(module, query, key, value, attention_mask, scale, **kwargs)
    out = out.to(query.dtype)
    collector.qnorm[layer] = torch.linalg.vector_norm(query.float(), dim=-1).cpu()
    collector.entropy[layer] = entropy.cpu()
    collector.used[layer] = kernel
    if collector.request is not None:
        collector.extras[layer] = layer_extras(
            query, key, collector.request, scale=scale, softcap=softcap,
            window=collector.spec.windows[layer],
        )  # fmt: skip
    return rearrange(out, "b h t d -> b t h d").contiguous(), None


def model_own_attention(
    module: nn.Module,
    query: Float[Tensor, "b h t d"],
    key: Float[Tensor, "b kv s d"],
    value: Float[Tensor, "b kv s d"],
    attention_mask: Tensor | None,
    scale: float,
    **kwargs: Any,
) -> Float[Tensor, "b h t d"]:
    """The layer's output as the model itself computes it (transformers' eager attention of the
    module's family, in the model's dtype), for a kernel that runs in another dtype: the next
    layers see exactly the activations of the model's own forward."""
    import importlib

    eager = importlib.import_module(type(module).__module__).eager_attention_forward
    allowed = allowed_mask(attention_mask, query.shape[2], key.shape[2], query.device)
    additive = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
    additive.masked_fill_(~allowed, torch.finfo(query.dtype).min)
    kwargs.pop("dropout", None)
    out, _ = eager(module, query, key, value, additive, scaling=scale, dropout=0.0, **kwargs)
    return rearrange(out, "b t h d -> b h t d")


FUSED: CustomAttention[Collector] = CustomAttention(
    NAME, attention_forward, "spectra_interp.extract.fused"
)


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a fused kernel runs in: fp32, so that H = log Z - scale · q·(P K) keeps fp32
    digits. A half-precision model's layer output then comes from its own attention
    (`model_own_attention`), not from the kernel."""
    return torch.float32


def default_kernel(device: torch.device | str) -> str:
    return "flash_cpu" if torch.device(device).type == "cpu" else "flex"


@torch.inference_mode()
def run(
    model: Any,
    spec: AttentionSpec,
    tokens: Tensor,
    kernel: str | None = None,
    request: SampleRequest | None = None,
) -> Collector:
    """One forward pass of the wrapped model (stopped before the logits) with the fused method;
    the extras of the requested queries on the way."""
    modules = [block.attn.original_component for block in model.blocks]
    collector = Collector(
        modules={id(m): i for i, m in enumerate(modules)},
        spec=spec,
        kernel=kernel or default_kernel(tokens.device),
        request=request,
    )
    with FUSED.active(model, collector) as hf_model:
        hf_model.base_model(input_ids=tokens, use_cache=False)
    return collector


def exactness_plan(spec: AttentionSpec, dtype: torch.dtype) -> dict[str, str]:
    """How each layer's entropy is kept exact, and where its output comes from (config.json)."""
    tolerance = entropy_tolerance(dtype)
    fallback = "recomputed in float64 from the same q and k"
    if spec.softcap:
        text = f"fp32 scores; rows that round outside [0, log(keys seen)] {fallback}"
    else:
        text = (
            f"{kernel_dtype(dtype)} kernel on centred keys; rows whose rounding bound exceeds "
            f"{tolerance:.1e} nats, or outside [0, log(keys seen)], {fallback}"
        )
        if kernel_dtype(dtype) != dtype:
            text += f"; layer output from the model's own eager attention in {dtype}"
    return {str(layer): text for layer in range(spec.n_layers)}


def kernel_plan(spec: AttentionSpec, device: torch.device | str) -> dict[str, str]:
    """Which kernel each layer uses and why (for config.json)."""
    default = default_kernel(device)
    plan = {}
    for layer in range(spec.n_layers):
        plan[str(layer)] = f"exact ({SOFTCAP_REASON})" if spec.softcap else default
    return plan
