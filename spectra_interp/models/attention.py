"""Custom attention functions run inside the wrapped transformers model, one forward at a time.

The TransformerLens bridge reimplements attention and never calls the model's attention
function, so a method that needs the query and keys as they meet (fused extraction, Phase 2's
masked passes) runs the wrapped transformers model itself, with the bridge's modules swapped back
for the originals and its own function registered in transformers' `AttentionInterface` under a
name, for the length of one forward pass. `CustomAttention` is that mechanism, once: a name, the
function, and the per-forward state the function reads (a context variable, so the function is
stateless between forwards and an error outside one).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

State = TypeVar("State")


def repeat_kv(x: Float[Tensor, "b kv t d"], groups: int) -> Float[Tensor, "b h t d"]:
    """Key/value heads repeated for the query heads that share them (grouped-query attention)."""
    return x if groups == 1 else torch.repeat_interleave(x, groups, dim=1)


def allowed_mask(
    attention_mask: Tensor | None, n_q: int, n_k: int, device: torch.device
) -> Bool[Tensor, "b_or_1 1 q k"]:
    """The boolean mask a layer applies (causal when the model passes none)."""
    if attention_mask is None:
        return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(n_k - n_q)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask == 0


@contextlib.contextmanager
def unbridged(bridge: Any) -> Iterator[nn.Module]:
    """The wrapped transformers model with its original modules back in place (the bridge's
    components swapped out), for the length of the block; restored afterwards."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            original = getattr(child, "original_component", None)
            if isinstance(original, nn.Module) and original is not child:
                setattr(parent, name, original)
                swapped.append((parent, name, child))
                child = original
            swap(child)

    model = bridge.original_model
    try:
        swap(model)
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


@contextlib.contextmanager
def attention_implementation(model: Any, name: str) -> Iterator[None]:
    """`model.config._attn_implementation` set to `name` for the block; restored afterwards."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


# transformers' attention-function interface with the active state first:
# (state, module, query [b h t d], key [b kv s d], value [b kv s e], attention_mask, scaling,
#  dropout, **kwargs) -> (output [b t h e], None)
AttentionFunction = Callable[..., tuple[Tensor, None]]


class CustomAttention(Generic[State]):
    """A named attention function and the state it reads during one forward (`active`).

    `mask` names transformers' mask builder the function receives masks from ("sdpa": boolean
    masks, None for plain causal attention; "eager": additive float masks).
    Raises RuntimeError when the function is called outside `active` (no state)."""

    def __init__(
        self, name: str, function: AttentionFunction, owner: str, mask: str = "sdpa"
    ) -> None:
        self.name = name
        self.function = function
        self.owner = owner
        self.mask = mask
        self._state: contextvars.ContextVar[State | None] = contextvars.ContextVar(
            name, default=None
        )

    def __call__(
        self,
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        state = self._state.get()
        if state is None:
            raise RuntimeError(f"{self.name} attention ran outside {self.owner}.")
        return self.function(
            state, module, query, key, value, attention_mask, scaling, dropout, **kwargs
        )

    def register(self) -> None:
        """Make the name an attention implementation transformers can dispatch to, with the
        masks of the builder `self.mask`."""
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

        AttentionInterface.register(self.name, self)
        builders = {"sdpa": sdpa_mask, "eager": eager_mask}
        AttentionMaskInterface.register(self.name, builders[self.mask])

    @contextlib.contextmanager
    def active(self, bridge: Any, state: State) -> Iterator[Any]:
        """The bridge's wrapped transformers model, unbridged and running this function with
        `state` for the block (yielded, to be called once or more); all restored afterwards."""
        self.register()
        with unbridged(bridge) as model:
            token = self._state.set(state)
            try:
                with attention_implementation(model, self.name):
                    yield model
            finally:
                self._state.reset(token)
