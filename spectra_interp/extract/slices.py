"""Attention kept for the views: every (or one) head's pattern among a slice of positions, with
those queries' ‖q‖ and full-context H, from one hooked forward pass (TransformerLens hooks
`hook_q`/`hook_rot_q` and `hook_pattern`). The sweep keeps a few slices for the report; the
head explorer runs one head on a text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.errors import SpectraError
from spectra_interp.metrics import attention_entropy, query_norm
from spectra_interp.models import hooks
from spectra_interp.models.load import spec_of


@dataclass(frozen=True)
class AttentionSlice:
    """Patterns among the slice's positions (keys before it not shown), ‖q‖ and H of its
    queries (H over every key a query sees), fp32 on the CPU."""

    pattern: Float[Tensor, "layer head query key"]
    qnorm: Float[Tensor, "layer head query"]
    entropy: Float[Tensor, "layer head query"]


def check_head(model: Any, layer: int, head: int) -> None:
    """A layer or head index out of the model's range is a SpectraError naming the range."""
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise SpectraError(f"layer {layer} is out of range: the model has {cfg.n_layers} layers.")
    if not 0 <= head < cfg.n_heads:
        raise SpectraError(f"head {head} is out of range: the model has {cfg.n_heads} heads.")


@torch.inference_mode()
def attention_slice(
    model: Any,
    tokens: Int[Tensor, " pos"],
    start: int,
    length: int,
    layers: Sequence[int] | None = None,
    head: int | None = None,
) -> AttentionSlice:
    """The attention of `layers` (default: all) and of one `head` (default: all) among the
    `length` tokens from `start` of one window, from one forward of `tokens[:start + length]`
    that stops after the last layer asked for."""
    spec = spec_of(model)
    layers = list(range(spec.n_layers) if layers is None else layers)
    heads = slice(None) if head is None else slice(head, head + 1)
    end = start + length
    kept: dict[str, list[Tensor]] = {"pattern": [], "qnorm": [], "entropy": []}

    def on_q(q: Tensor, hook: Any) -> None:
        kept["qnorm"].append(query_norm(q)[0, heads, start:end].cpu())

    def on_pattern(pattern: Tensor, hook: Any) -> None:
        rows = pattern[0, heads, start:end]
        kept["pattern"].append(rows[..., start:end].float().cpu())
        kept["entropy"].append(attention_entropy(rows[None], block=length)[0].cpu())

    fwd_hooks = []
    for layer in layers:
        fwd_hooks.append((hooks.attn_hook(spec.q_hook, layer), on_q))
        fwd_hooks.append((hooks.attn_hook("pattern", layer), on_pattern))
    window = tokens[:end][None].to(model.cfg.device)
    model.run_with_hooks(
        window, fwd_hooks=fwd_hooks, stop_at_layer=max(layers) + 1, return_type=None,
        output_attentions=False,
    )  # fmt: skip
    return AttentionSlice(*(torch.stack(kept[name]) for name in ("pattern", "qnorm", "entropy")))
