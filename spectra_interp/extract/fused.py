"""The fused method: ‖q‖ and exact H inside the wrapped transformers model's own attention
function, at close to the cost of the model's forward pass, without a T x T pattern.

Since sum_j p_j s_j = scale * q · (sum_j p_j k_j), the entropy of one query's attention is

    H = logsumexp(s) - scale * q · (P K),

so one fused attention kernel that returns its logsumexp, run with values [V | K], gives the
layer's output P V, the mean key P K and log Z together, in O(T) memory. The query it receives is
the one that meets the keys (after any QK-norm and RoPE), so ‖q‖ is read there too.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from spectra_interp.extract.extras import SampleRequest, layer_extras
from spectra_interp.models.architecture import AttentionSpec
from spectra_interp.models.attention import CustomAttention, allowed_mask, repeat_kv

NAME = "spectra_fused"
KERNELS = ("flash_cpu", "flex", "exact")
EXACT_BLOCK = 256
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
    """Output and entropy over blocks of queries (fp32 math), any mask or soft-cap."""
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
    return out, entropy


def entropy_from_kernel(
    lse: Float[Tensor, "b h t"],
    q: Float[Tensor, "b h t d"],
    mean_key: Float[Tensor, "b h t d"],
    scale: float,
) -> Float[Tensor, "b h t"]:
    """H = log Z - scale · q·(P K), from a kernel's logsumexp and its output on values K."""
    return lse.float() - scale * torch.einsum("bhtd,bhtd->bht", q.float(), mean_key.float())


def flash_cpu_attention(
    q: Float[Tensor, "b h t d"],
    k: Float[Tensor, "b h s d"],
    v: Float[Tensor, "b h s d"],
    attention_mask: Tensor | None,
    scale: float,
) -> tuple[Float[Tensor, "b h t d"], Float[Tensor, "b h t"]]:
    """Output and entropy from one call of the CPU flash op on [Q|0], [K|0], [V|K]."""
    d = q.shape[-1]
    zeros = torch.zeros_like(q)
    mask = None
    if attention_mask is not None:
        allowed = allowed_mask(attention_mask, q.shape[2], k.shape[2], q.device)
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(
            ~allowed, -math.inf
        )
    both, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        torch.cat([q, zeros], dim=-1),
        torch.cat([k, torch.zeros_like(k)], dim=-1),
        torch.cat([v, k], dim=-1),
        0.0,
        attention_mask is None,
        attn_mask=mask,
        scale=scale,
    )
    del zeros
    return both[..., :d], entropy_from_kernel(lse, q, both[..., d:], scale)


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
) -> tuple[Float[Tensor, "b h t d"], Float[Tensor, "b h t"]]:
    """Output and entropy from FlexAttention with values [V | K] (compiled on CUDA)."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    n_q, n_k = q.shape[2], k.shape[2]
    offset = n_k - n_q

    def mask_mod(b: Any, h: Any, qi: Any, ki: Any) -> Any:
        causal = ki <= qi + offset
        return causal & (qi + offset - ki < window) if window else causal

    block_mask = create_block_mask(mask_mod, None, None, n_q, n_k, device=q.device)
    run = _compiled_flex() if q.device.type == "cuda" else flex_attention
    with _quiet_flex():
        out, aux = run(
            q, k, torch.cat([v, k], dim=-1), block_mask=block_mask, scale=scale,
            return_aux=AuxRequest(lse=True),
        )  # fmt: skip
    d = q.shape[-1]
    return out[..., :d], entropy_from_kernel(aux.lse, q, out[..., d:], scale)


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
    if kernel == "flash_cpu":
        out, entropy = flash_cpu_attention(query, k, v, attention_mask, scale)
    elif kernel == "flex":
        out, entropy = flex_attention_call(query, k, v, kwargs.get("sliding_window"), scale)
    else:
        allowed = allowed_mask(attention_mask, query.shape[2], k.shape[2], query.device)
        out, entropy = exact_attention(query, k, v, allowed, scale, softcap)
    collector.qnorm[layer] = torch.linalg.vector_norm(query.float(), dim=-1).cpu()
    collector.entropy[layer] = entropy.clamp_min(0.0).cpu()
    collector.used[layer] = kernel
    if collector.request is not None:
        collector.extras[layer] = layer_extras(
            query, key, collector.request, scale=scale, softcap=softcap,
            window=collector.spec.windows[layer],
        )  # fmt: skip
    return rearrange(out, "b h t d -> b t h d").contiguous(), None


FUSED: CustomAttention[Collector] = CustomAttention(
    NAME, attention_forward, "spectra_interp.extract.fused"
)


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


def kernel_plan(spec: AttentionSpec, device: torch.device | str) -> dict[str, str]:
    """Which kernel each layer uses and why (for config.json)."""
    default = default_kernel(device)
    plan = {}
    for layer in range(spec.n_layers):
        plan[str(layer)] = f"exact ({SOFTCAP_REASON})" if spec.softcap else default
    return plan
