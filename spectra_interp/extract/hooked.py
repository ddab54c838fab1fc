"""The TransformerLens hook methods: ‖q‖ from the query hook the model's `AttentionSpec` names,
H from `hook_pattern`.

- `stream`: forward hooks reduce each tensor as it is made, so at most one layer's attention
  pattern is alive at a time;
- `cache`: `run_with_cache` over groups of `layers_per_pass` layers, one forward pass per group
  stopped after it, so at most one group's patterns are cached at once (what an intervention
  that needs cached activations wants). TransformerLens 4 runs the blocks before
  `start_at_layer` anyway (on discarded input), so each pass starts from the tokens and the cost
  grows with the number of groups: one group is one forward.

Both stop the forward pass after the last layer: the logits are never computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from spectra_interp.errors import SpectraError
from spectra_interp.extract.extras import SampleRequest, extras_from_scores
from spectra_interp.metrics import attention_entropy, query_norm
from spectra_interp.models import hooks
from spectra_interp.models.architecture import AttentionSpec

PerLayer = dict[int, Tensor]


@dataclass
class Gathered:
    """What a hook method gathers per layer: ‖q‖, H and the sampled queries' extras."""

    qnorm: PerLayer = field(default_factory=dict)
    entropy: PerLayer = field(default_factory=dict)
    extras: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    def add_extras(
        self, spec: AttentionSpec, layer: int, scores: Tensor, request: SampleRequest
    ) -> None:
        """From one layer's hook_attn_scores (what its softmax sees)."""
        self.extras[layer] = extras_from_scores(
            scores, request, softcap=spec.softcap, window=spec.windows[layer]
        )


def layer_groups(n_layers: int, layers_per_pass: int) -> list[range]:
    if layers_per_pass < 1:
        raise SpectraError(f"layers_per_pass must be at least 1; got {layers_per_pass}.")
    return [
        range(s, min(s + layers_per_pass, n_layers)) for s in range(0, n_layers, layers_per_pass)
    ]


def stream(
    model: Any,
    spec: AttentionSpec,
    tokens: Tensor,
    request: SampleRequest | None = None,
    layers_per_pass: int | None = None,
) -> Gathered:
    """One `run_with_hooks` over every layer, each hook reducing its tensor as it passes
    (`layers_per_pass` is not used: every layer is read in the one pass)."""
    out = Gathered()

    def on_q(layer: int) -> Callable:
        def hook(q: Tensor, hook: Any) -> None:
            out.qnorm[layer] = query_norm(q).cpu()

        return hook

    def on_scores(layer: int, request: SampleRequest) -> Callable:
        def hook(scores: Tensor, hook: Any) -> None:
            out.add_extras(spec, layer, scores, request)

        return hook

    def on_pattern(layer: int) -> Callable:
        def hook(pattern: Tensor, hook: Any) -> None:
            out.entropy[layer] = attention_entropy(pattern).cpu()

        return hook

    fwd_hooks = []
    for layer in range(spec.n_layers):
        fwd_hooks.append((hooks.attn_hook(spec.q_hook, layer), on_q(layer)))
        if request is not None:
            fwd_hooks.append((hooks.attn_hook("attn_scores", layer), on_scores(layer, request)))
        fwd_hooks.append((hooks.attn_hook("pattern", layer), on_pattern(layer)))
    model.run_with_hooks(
        tokens,
        fwd_hooks=fwd_hooks,
        stop_at_layer=spec.n_layers,
        return_type=None,
        output_attentions=False,
    )
    return out


def cache(
    model: Any,
    spec: AttentionSpec,
    tokens: Tensor,
    request: SampleRequest | None = None,
    layers_per_pass: int | None = 4,
) -> Gathered:
    """One `run_with_cache` per group of layers, each caching only that group's hooks."""
    out = Gathered()
    kinds = [spec.q_hook, "pattern"] + (["attn_scores"] if request is not None else [])
    for group in layer_groups(spec.n_layers, 4 if layers_per_pass is None else layers_per_pass):
        names = {(kind, layer): hooks.attn_hook(kind, layer) for kind in kinds for layer in group}
        _, cached = model.run_with_cache(
            tokens,
            names_filter=list(names.values()),
            stop_at_layer=group[-1] + 1,
            output_attentions=False,
        )
        for layer in group:
            q = cached[names[spec.q_hook, layer]]
            out.qnorm[layer] = query_norm(q).cpu()
            out.entropy[layer] = attention_entropy(cached[names["pattern", layer]]).cpu()
            if request is not None:
                out.add_extras(spec, layer, cached[names["attn_scores", layer]], request)
        del cached
    return out
