"""Per (window, layer, query head, position): the query norm and the attention entropy.

`extract(load_model(source), tokens)` is the library entry point. The methods (`--method`)
give the same numbers; see the README's "Extraction" for which is the default and why.
Windows in a batch have equal length (no padding): ragged input is rejected.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from spectra_interp.config import DEFAULT_METHOD, METHODS
from spectra_interp.errors import SpectraError
from spectra_interp.extract import fused
from spectra_interp.extract.extras import EXTRAS, SampleRequest
from spectra_interp.models import hooks
from spectra_interp.models.architecture import AttentionSpec
from spectra_interp.models.load import spec_of


class PerLayerStats(Protocol):
    """What a method gathers per layer: ‖q‖ and H [batch, head, pos], and the extras."""

    qnorm: dict[int, Tensor]
    entropy: dict[int, Tensor]
    extras: dict[int, dict[str, Tensor]]


class MethodRun(Protocol):
    """The signature of every `config.METHODS` implementation."""

    def __call__(
        self,
        model: Any,
        spec: AttentionSpec,
        tokens: Tensor,
        request: SampleRequest | None = None,
        layers_per_pass: int | None = None,
    ) -> PerLayerStats: ...


def _resolve(reference: str) -> Any:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def method_run(method: str) -> MethodRun:
    """The implementation `config.METHODS` names for `method` (SpectraError for another name)."""
    if method not in METHODS:
        raise SpectraError(f"Unknown extraction method '{method}'; use one of {tuple(METHODS)}.")
    return _resolve(METHODS[method].run)


def fused_run(
    model: Any,
    spec: AttentionSpec,
    tokens: Tensor,
    request: SampleRequest | None = None,
    layers_per_pass: int | None = None,
) -> PerLayerStats:
    """`fused.run` with its kernel chosen per layer (`layers_per_pass` is not used: one pass)."""
    return fused.run(model, spec, tokens, request=request)


@dataclass(frozen=True)
class Extraction:
    """Reduced statistics of one batch of windows (fp32, on the CPU)."""

    qnorm: Float[Tensor, "batch layer head pos"]
    entropy: Float[Tensor, "batch layer head pos"]
    n_keys: Int[Tensor, "layer pos"]
    # Per requested query: [batch, layer, head, k] (and a trailing scale axis where EXTRAS says).
    extras: dict[str, Tensor] = field(default_factory=dict)


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


def q_source(model: Any, method: str) -> dict[str, Any]:
    """Which tensor supplied ‖q‖ (and which kernel H) under `method`, and why (config.json)."""
    method_run(method)
    return {"method": method, **_resolve(METHODS[method].q_source)(model, spec_of(model))}


def argument_source(model: Any, spec: AttentionSpec) -> dict[str, Any]:
    """‖q‖ read from the query argument of the model's own attention function (fused)."""
    return {
        "source": "the query argument of the model's attention function",
        "why": "it is the tensor multiplied with the keys: after any QK-norm and RoPE, "
        "before the score scale",
        "kernels": fused.kernel_plan(spec, model.cfg.device),
        "exactness": fused.exactness_plan(spec, model.cfg.dtype),
    }


def hook_source(model: Any, spec: AttentionSpec) -> dict[str, Any]:
    """‖q‖ read at TransformerLens' query hook of each layer (stream, cache)."""
    return {"source": hooks.template(hooks.attn_hook(spec.q_hook, 0)), "why": spec.q_reason}


def _stack(per_layer: dict[int, Tensor], n_layers: int) -> Float[Tensor, "batch layer head pos"]:
    return rearrange([per_layer[layer] for layer in range(n_layers)], "l b h p -> b l h p")


def _stack_extras(per_layer: dict[int, dict[str, Tensor]], n_layers: int) -> dict[str, Tensor]:
    if not per_layer:
        return {}
    return {
        name: torch.stack([per_layer[layer][name] for layer in range(n_layers)], dim=1)
        for name in EXTRAS
    }


@torch.inference_mode()
def extract(
    model: Any,
    tokens: Any,
    method: str = DEFAULT_METHOD,
    layers_per_pass: int = 4,
    sample: SampleRequest | None = None,
) -> Extraction:
    """‖q‖ and H for every (window, layer, query head, position) of a batch of equal-length windows,
    and, for the queries `sample` names, the extras that need their logits.

    Statistics are per query head (grouped-query attention shares keys, never queries).
    """
    run = method_run(method)
    spec = spec_of(model)
    batch = as_token_batch(tokens)
    n_ctx = int(model.cfg.n_ctx)
    if batch.shape[1] > n_ctx:
        raise SpectraError(f"Windows of {batch.shape[1]} tokens exceed the model's {n_ctx}.")
    batch = batch.to(model.cfg.device)
    if sample is not None and sample.positions.shape[0] != batch.shape[0]:
        raise SpectraError("The sample request needs one row of positions per window.")
    got = run(model, spec, batch, request=sample, layers_per_pass=layers_per_pass)
    return Extraction(
        qnorm=_stack(got.qnorm, spec.n_layers),
        entropy=_stack(got.entropy, spec.n_layers),
        n_keys=spec.keys_seen(batch.shape[1]),
        extras=_stack_extras(got.extras, spec.n_layers),
    )
