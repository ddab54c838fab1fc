"""Per (window, layer, query head, position): the query norm and the attention entropy.

Two methods that give the same numbers:
- `stream` (default): forward hooks on `blocks.{l}.attn.hook_q` and `blocks.{l}.attn.hook_pattern`
  reduce each tensor as it is made, so at most one layer's attention pattern is alive at a time;
- `cache`: `run_with_cache` with a names filter over groups of `layers_per_pass` layers per forward
  pass; each pass stops after its group and the next starts from the cached residual stream,
  so memory is bounded by the group and no layer runs twice.

Both stop the forward pass after the last layer they need: the logits are never computed.
Windows in a batch have equal length (no padding): ragged input is rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.errors import SpectraError
from spectra_interp.metrics import attention_entropy, keys_seen, query_norm

Q_HOOK = "blocks.{layer}.attn.hook_q"
PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"
RESID_HOOK = "blocks.{layer}.hook_resid_post"
METHODS = ("stream", "cache")


@dataclass(frozen=True)
class Extraction:
    """Reduced statistics of one batch of windows (fp32, on the CPU)."""

    qnorm: Float[Tensor, "batch layer head pos"]
    entropy: Float[Tensor, "batch layer head pos"]
    n_keys: Int[Tensor, " pos"]
    q_hook: str = Q_HOOK


def as_token_batch(tokens: Any) -> Int[Tensor, "batch pos"]:
    """A [batch, pos] int64 tensor from a tensor, array or list of equal-length windows."""
    if isinstance(tokens, Sequence) and not isinstance(tokens, Tensor):
        lengths = {len(window) for window in tokens}
        if len(lengths) > 1:
            raise SpectraError(
                f"Windows in a batch must have equal length (no padding); got lengths "
                f"{sorted(lengths)}."
            )
    batch = torch.as_tensor(tokens)
    if batch.dim() == 1:
        batch = batch.unsqueeze(0)
    if batch.dim() != 2 or batch.shape[1] == 0:
        raise SpectraError(f"Token ids must have shape [batch, pos]; got {tuple(batch.shape)}.")
    if batch.dtype.is_floating_point:
        raise SpectraError("Token ids must be integers.")
    return batch.long()


def _layer_groups(n_layers: int, layers_per_pass: int) -> list[range]:
    if layers_per_pass < 1:
        raise SpectraError(f"layers_per_pass must be at least 1; got {layers_per_pass}.")
    return [
        range(s, min(s + layers_per_pass, n_layers)) for s in range(0, n_layers, layers_per_pass)
    ]


def _sliding_window(model: Any) -> int | None:
    window = getattr(model.cfg, "window_size", None) or getattr(model.cfg, "sliding_window", None)
    return int(window) if isinstance(window, int) and window > 0 else None


def _stack(per_layer: dict[int, Tensor], n_layers: int) -> Float[Tensor, "batch layer head pos"]:
    return rearrange([per_layer[layer] for layer in range(n_layers)], "l b h p -> b l h p")


def _stream(model: Any, tokens: Tensor) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    n_layers = model.cfg.n_layers
    norms: dict[int, Tensor] = {}
    entropies: dict[int, Tensor] = {}

    def on_q(layer: int) -> Callable:
        def hook(q: Tensor, hook: Any) -> None:
            norms[layer] = query_norm(q).cpu()

        return hook

    def on_pattern(layer: int) -> Callable:
        def hook(pattern: Tensor, hook: Any) -> None:
            entropies[layer] = attention_entropy(pattern).cpu()

        return hook

    hooks = []
    for layer in range(n_layers):
        hooks.append((Q_HOOK.format(layer=layer), on_q(layer)))
        hooks.append((PATTERN_HOOK.format(layer=layer), on_pattern(layer)))
    model.run_with_hooks(
        tokens, fwd_hooks=hooks, stop_at_layer=n_layers, return_type=None, output_attentions=False
    )
    return norms, entropies


def _cache(
    model: Any, tokens: Tensor, layers_per_pass: int
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Each pass caches one group of layers and its last residual stream, and the next pass
    starts from that residual (`start_at_layer`), so no layer is computed twice."""
    norms: dict[int, Tensor] = {}
    entropies: dict[int, Tensor] = {}
    inputs: Tensor = tokens
    for group in _layer_groups(model.cfg.n_layers, layers_per_pass):
        names = [Q_HOOK.format(layer=layer) for layer in group]
        names += [PATTERN_HOOK.format(layer=layer) for layer in group]
        names.append(RESID_HOOK.format(layer=group[-1]))
        start = None if group[0] == 0 else group[0]
        _, cache = model.run_with_cache(
            inputs, names_filter=names, start_at_layer=start, stop_at_layer=group[-1] + 1
        )
        for layer in group:
            norms[layer] = query_norm(cache[Q_HOOK.format(layer=layer)]).cpu()
            entropies[layer] = attention_entropy(cache[PATTERN_HOOK.format(layer=layer)]).cpu()
        inputs = cache[RESID_HOOK.format(layer=group[-1])]
        del cache
    return norms, entropies


@torch.inference_mode()
def extract(
    model: Any, tokens: Any, method: str = "stream", layers_per_pass: int = 4
) -> Extraction:
    """‖q‖ and H for every (window, layer, query head, position) of a batch of equal-length windows.

    Statistics are per query head (grouped-query attention shares keys, never queries).
    """
    if method not in METHODS:
        raise SpectraError(f"Unknown extraction method '{method}'; use one of {METHODS}.")
    batch = as_token_batch(tokens)
    n_ctx = int(model.cfg.n_ctx)
    if batch.shape[1] > n_ctx:
        raise SpectraError(f"Windows of {batch.shape[1]} tokens exceed the model's {n_ctx}.")
    batch = batch.to(model.cfg.device)
    if method == "stream":
        norms, entropies = _stream(model, batch)
    else:
        norms, entropies = _cache(model, batch, layers_per_pass)
    n_layers = model.cfg.n_layers
    return Extraction(
        qnorm=_stack(norms, n_layers),
        entropy=_stack(entropies, n_layers),
        n_keys=keys_seen(batch.shape[1], _sliding_window(model)),
    )
