"""Spectra's keys seen against the mask the model really applies, checked before a run writes.

Spectra counts the keys each query sees from the config (`architecture.layer_windows`: t + 1 on a
causal layer, at most the window on a sliding one). transformers builds each layer's mask from the
same config fields, but not always with the same meaning: `"sliding_window": 0`, which some
fine-tuning tools write to mean "no window", makes transformers' sliding-window overlay
(`kv > q - window`) let no key through, so the eager forward adds a mask of the wrong width and
SDPA-style kernels see rows with no key at all (H = 0 or NaN everywhere). Two checks, both one
sentence naming the layer and the config field:

- `check_window_value` (from the config, before any weights are read): a window transformers
  cannot mask correctly (below 1 key, or not a whole number);
- `check_masks` (one forward of the first window, every layer): the boolean mask each layer's
  attention function receives, under the eager implementation (the model's own) and the SDPA one
  (the fused extraction's), equals the causal-with-window mask of Spectra's keys seen.

The probe's attention function returns zeros and dense MLPs are skipped: a mask depends on
positions only, not on the hidden states, so the forward costs the projections alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor, nn

from spectra_interp.errors import SpectraError
from spectra_interp.models.architecture import WINDOW_FIELD, AttentionSpec, check_window_value
from spectra_interp.models.attention import CustomAttention

PROBE = "spectra_mask_probe"
# transformers' mask builders, by the attention implementation whose masks they make.
MASK_KINDS = ("eager", "sdpa")


def expected_allowed(n_pos: int, window: int | None) -> Bool[Tensor, "q k"]:
    """The causal mask with an optional window: query t sees keys max(0, t-window+1) .. t."""
    q = torch.arange(n_pos)[:, None]
    k = torch.arange(n_pos)[None, :]
    allowed = k <= q
    return allowed & (q - k < window) if window else allowed


def applied_allowed(mask: Tensor | None, kind: str, n_q: int, n_k: int) -> Tensor:
    """The boolean [q, k] keys an attention function of `kind` lets through, from the mask it
    receives: eager adds a float mask (0 where allowed; no mask: every key), SDPA takes a
    boolean one (no mask: causal). A mask of another width is returned as it is."""
    if mask is None:
        full = torch.ones(n_q, n_k, dtype=torch.bool)
        return full if kind == "eager" else full.tril(n_k - n_q)
    m = mask[0, 0].cpu()
    return m if m.dtype == torch.bool else m == 0


def _probe_forward(
    seen: dict[int, Tensor | None],
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Record the mask this layer receives; return zeros (the output is never used)."""
    seen[id(module)] = None if attention_mask is None else attention_mask.detach()
    b, _, t, _ = query.shape
    return query.new_zeros(b, t, query.shape[1], value.shape[-1]), None


PROBES = {
    kind: CustomAttention(f"{PROBE}_{kind}", _probe_forward, "spectra_interp.models.masks", kind)
    for kind in MASK_KINDS
}


class _Skipped(nn.Module):
    """Stands in for a dense MLP during the probe: a mask does not depend on hidden states."""

    def forward(self, hidden: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.zeros_like(hidden)


@contextlib.contextmanager
def _without_mlps(hf_model: nn.Module) -> Iterator[None]:
    """Swap every dense MLP (a child `mlp` whose class name ends in `MLP`, e.g. LlamaMLP) for
    `_Skipped` for the length of the block; other feed-forward blocks (mixtures of experts) run."""
    swapped = []
    for module in hf_model.modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, nn.Module) and type(mlp).__name__.endswith("MLP"):
            swapped.append((module, mlp))
    try:
        for module, _ in swapped:
            module.mlp = _Skipped()
        yield
    finally:
        for module, mlp in swapped:
            module.mlp = mlp


@torch.inference_mode()
def applied_masks(model: Any, tokens: Tensor, kind: str) -> list[Tensor | None]:
    """The mask each layer's attention function receives (layer order) in one forward of
    `tokens` ([1, pos]) with transformers' `kind` mask builder (`MASK_KINDS`). Attention returns
    zeros and dense MLPs are skipped, so the forward costs the projections alone."""
    modules = [block.attn.original_component for block in model.blocks]
    seen: dict[int, Tensor | None] = {}
    with PROBES[kind].active(model, seen) as hf_model, _without_mlps(hf_model):
        hf_model.base_model(input_ids=tokens.to(model.cfg.device), use_cache=False)
    return [seen.get(id(m)) for m in modules]


def _window_field(config: Any, layer: int) -> str:
    layer_types = getattr(config, "layer_types", None)
    value = getattr(config, WINDOW_FIELD, None)
    where = f"`{WINDOW_FIELD}` = {value!r}"
    return f"{where} with `layer_types`[{layer}] = {layer_types[layer]!r}" if layer_types else where


def mask_disagreement(
    spec: AttentionSpec, masks: list[Tensor | None], kind: str, n_pos: int
) -> tuple[int, str] | None:
    """The first layer whose applied mask differs from Spectra's keys seen, and how (None: all
    agree)."""
    for layer, mask in enumerate(masks):
        allowed = applied_allowed(mask, kind, n_pos, n_pos)
        expected = expected_allowed(n_pos, spec.windows[layer])
        if allowed.shape != expected.shape:
            return layer, (f"the {kind} mask covers {allowed.shape[-1]} keys for {n_pos} positions")
        if torch.equal(allowed, expected):
            continue
        bad = int(torch.nonzero((allowed != expected).any(-1))[0].item())
        seen = int(allowed[bad].sum())
        future = int(allowed[bad, bad + 1 :].sum())
        detail = f"{seen} keys" + (f" ({future} of them after it)" if future else "")
        if seen == 0:
            detail = "no key"
        return layer, (
            f"the {kind} mask lets query {bad} see {detail} where Spectra counts "
            f"{int(expected[bad].sum())}"
        )
    return None


def check_masks(model: Any, tokens: Tensor, kinds: tuple[str, ...] = MASK_KINDS) -> None:
    """Refuse (SpectraError, one sentence naming the layer and the config field) a model whose
    applied masks on `tokens` (the run's first window, [pos] or [1, pos]) differ from the keys
    seen in its `AttentionSpec`, under each attention implementation in `kinds`."""
    from spectra_interp.models.load import spec_of

    spec = spec_of(model)
    window = tokens.reshape(1, -1)
    config = model.original_model.config
    check_window_value(config)
    for kind in kinds:
        found = mask_disagreement(spec, applied_masks(model, window, kind), kind, window.shape[1])
        if found is not None:
            layer, how = found
            raise SpectraError(
                f"Spectra cannot measure {spec.architecture}: at layer {layer} {how} (config "
                f"field {_window_field(config, layer)}), so its keys seen would not be the "
                "model's; fix that field or pick another model."
            )
