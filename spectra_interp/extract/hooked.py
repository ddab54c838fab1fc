"""The TransformerLens hook methods: ‖q‖ from the query hook the model's `AttentionSpec` names,
H from `hook_pattern`.

- `stream`: forward hooks reduce each tensor as it is made, so at most one layer's attention
  pattern is alive at a time;
- `cache`: `run_with_cache` over groups of `layers_per_pass` layers per forward pass; each pass
  stops after its group and the next starts from the cached residual stream, so memory is
  bounded by the group and no layer runs twice.

Both stop the forward pass after the last layer: the logits are never computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from spectra_interp.errors import SpectraError
from spectra_interp.metrics import attention_entropy, query_norm
from spectra_interp.models import hooks
from spectra_interp.models.architecture import AttentionSpec

PerLayer = dict[int, Tensor]


def layer_groups(n_layers: int, layers_per_pass: int) -> list[range]:
    if layers_per_pass < 1:
        raise SpectraError(f"layers_per_pass must be at least 1; got {layers_per_pass}.")
    return [
        range(s, min(s + layers_per_pass, n_layers)) for s in range(0, n_layers, layers_per_pass)
    ]


def stream(model: Any, spec: AttentionSpec, tokens: Tensor) -> tuple[PerLayer, PerLayer]:
    norms: PerLayer = {}
    entropies: PerLayer = {}

    def on_q(layer: int) -> Callable:
        def hook(q: Tensor, hook: Any) -> None:
            norms[layer] = query_norm(q).cpu()

        return hook

    def on_pattern(layer: int) -> Callable:
        def hook(pattern: Tensor, hook: Any) -> None:
            entropies[layer] = attention_entropy(pattern).cpu()

        return hook

    fwd_hooks = []
    for layer in range(spec.n_layers):
        fwd_hooks.append((hooks.attn_hook(spec.q_hook, layer), on_q(layer)))
        fwd_hooks.append((hooks.attn_hook("pattern", layer), on_pattern(layer)))
    model.run_with_hooks(
        tokens,
        fwd_hooks=fwd_hooks,
        stop_at_layer=spec.n_layers,
        return_type=None,
        output_attentions=False,
    )
    return norms, entropies


def cache(
    model: Any, spec: AttentionSpec, tokens: Tensor, layers_per_pass: int
) -> tuple[PerLayer, PerLayer]:
    """Each pass caches one group of layers and its last residual stream, and the next pass
    starts from that residual (`start_at_layer`), so no layer is computed twice."""
    norms: PerLayer = {}
    entropies: PerLayer = {}
    inputs: Tensor = tokens
    for group in layer_groups(spec.n_layers, layers_per_pass):
        q_names = {layer: hooks.attn_hook(spec.q_hook, layer) for layer in group}
        p_names = {layer: hooks.attn_hook("pattern", layer) for layer in group}
        resid = hooks.resid_post(group[-1])
        start = None if group[0] == 0 else group[0]
        _, cached = model.run_with_cache(
            inputs,
            names_filter=[*q_names.values(), *p_names.values(), resid],
            start_at_layer=start,
            stop_at_layer=group[-1] + 1,
        )
        for layer in group:
            norms[layer] = query_norm(cached[q_names[layer]]).cpu()
            entropies[layer] = attention_entropy(cached[p_names[layer]]).cpu()
        inputs = cached[resid]
        del cached
    return norms, entropies
