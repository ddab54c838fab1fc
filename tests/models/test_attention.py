"""One custom-attention mechanism: a named function that sees the state of the forward it runs in,
and leaves the bridge, the config and the state as they were."""

from __future__ import annotations

import pytest
import torch

from spectra_interp.models.attention import CustomAttention


def _eager_recorder():
    def function(state, module, query, key, value, attention_mask, scaling, dropout, **kwargs):
        import importlib

        state.append(module)
        eager = importlib.import_module(type(module).__module__).eager_attention_forward
        return eager(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return function


def test_the_function_sees_its_state_in_every_layer_and_nothing_after(tiny_model):
    mechanism = CustomAttention("spectra_test_recorder", _eager_recorder(), "this test")
    state: list = []
    tokens = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(0))
    before = {name: type(m) for name, m in tiny_model.original_model.named_modules()}
    implementation = tiny_model.original_model.config._attn_implementation
    with torch.inference_mode(), mechanism.active(tiny_model, state) as hf:
        assert hf.config._attn_implementation == "spectra_test_recorder"
        hf.base_model(input_ids=tokens, use_cache=False)
    originals = [block.attn.original_component for block in tiny_model.blocks]
    assert [id(m) for m in state] == [id(m) for m in originals]
    assert {name: type(m) for name, m in tiny_model.original_model.named_modules()} == before
    assert tiny_model.original_model.config._attn_implementation == implementation
    x = torch.zeros(1, 1, 2, 4)
    with pytest.raises(RuntimeError, match="outside this test"):
        mechanism(torch.nn.Module(), x, x, x, None)
