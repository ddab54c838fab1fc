"""Faithful on every architecture: ‖q‖ is the query that meets the keys, H is the head's real
attention entropy, and keys seen follow the mask each layer really applies.

Each tiny random model of the matrix (tests/arch_matrix.py) is measured by `extract` (the code
the sweep runs) and, independently, by plain transformers: eager attention with
output_attentions=True, a forward hook on the module whose output is the query entering q·k,
and a forward pre-hook reading the mask each attention layer receives.
"""

from __future__ import annotations

import pytest
import torch
from arch_matrix import CTX, MATRIX, WINDOW, save_tiny_model

from spectra_interp.config import METHODS
from spectra_interp.errors import SpectraError
from spectra_interp.extract import extract
from spectra_interp.models import load_model
from spectra_interp.models.architecture import check_measurable, layer_windows

# The module whose output is the query entering q·k, and how to read [batch, pos, head, d] off it.
QUERY_MODULE = {
    "llama": "q_proj",
    "mistral": "q_proj",
    "qwen2": "q_proj",
    "gemma2": "q_proj",
    "qwen3": "q_norm",
    "olmo2": "q_norm",
    "phi3": "qkv_proj",
    "gpt2": "c_attn",
    "gpt_neox": "query_key_value",
}
QK_NORM = {"qwen3", "olmo2"}


def _query_heads(name: str, out: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    b, s = out.shape[:2]
    if name == "gpt_neox":  # heads interleave [q | k | v] per head
        return out.view(b, s, n_heads, 3 * d_head)[..., :d_head]
    return out[..., : n_heads * d_head].reshape(b, s, n_heads, d_head)


def _attention_modules(model):
    layers = getattr(model.base_model, "layers", None) or model.base_model.h
    names = ("self_attn", "attn", "attention")
    return [next(getattr(layer, n) for n in names if hasattr(layer, n)) for layer in layers]


def reference(name: str, folder, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """‖q‖, H and keys seen of every (layer, head, position) with plain transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    modules = _attention_modules(model)
    n_heads = model.config.num_attention_heads
    d_head = getattr(modules[0], "head_dim", None) or model.config.hidden_size // n_heads
    norms, raw, masks = {}, {}, {}
    handles = []
    for i, attn in enumerate(modules):

        def keep_q(module, inputs, output, i=i):
            norms[i] = _query_heads(name, output, n_heads, d_head).norm(dim=-1).transpose(1, 2)

        def keep_mask(module, args, kwargs, i=i):
            masks[i] = kwargs.get("attention_mask")

        def keep_raw(module, inputs, output, i=i):
            raw[i] = _query_heads(name, output, n_heads, d_head).norm(dim=-1).transpose(1, 2)

        handles.append(getattr(attn, QUERY_MODULE[name]).register_forward_hook(keep_q))
        handles.append(attn.register_forward_pre_hook(keep_mask, with_kwargs=True))
        if name in QK_NORM:
            handles.append(attn.q_proj.register_forward_hook(keep_raw))
    with torch.inference_mode():
        out = model(tokens, output_attentions=True)
    for h in handles:
        h.remove()
    entropy = torch.stack([-(torch.xlogy(a, a)).sum(-1) for a in out.attentions], dim=1)
    n_keys = []
    for i in range(len(modules)):
        mask = masks[i]
        if mask is None or mask.dtype == torch.bool:
            allowed = torch.ones(CTX, CTX).tril().bool() if mask is None else mask[0, 0]
        else:
            allowed = mask[0, 0] == 0
        n_keys.append(allowed.sum(-1))
    return {
        "qnorm": torch.stack([norms[i] for i in range(len(modules))], dim=1),
        "raw": torch.stack([raw[i] for i in range(len(modules))], dim=1) if raw else None,
        "entropy": entropy,
        "n_keys": torch.stack(n_keys),
    }


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 300, (2, CTX), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_extract_matches_plain_transformers(name, tmp_path, tokens):
    folder = save_tiny_model(name, tmp_path / name)
    ref = reference(name, folder, tokens)
    model = load_model(str(folder), device="cpu", dtype="float32")
    runs = {m: extract(model, tokens, method=m, layers_per_pass=1) for m in METHODS}
    for method, got in runs.items():
        torch.testing.assert_close(got.qnorm, ref["qnorm"], atol=1e-4, rtol=0, msg=method)
        torch.testing.assert_close(got.entropy, ref["entropy"], atol=1e-4, rtol=0, msg=method)
        assert torch.equal(got.n_keys, ref["n_keys"]), (method, got.n_keys, ref["n_keys"])
        # the default method against each hook method directly, not only via the reference
        for field in ("qnorm", "entropy"):
            torch.testing.assert_close(
                getattr(got, field), getattr(runs["fused"], field), atol=1e-4, rtol=0
            )
    if name in QK_NORM:  # the raw projection's norms are not the query's: no pass by accident
        assert (ref["raw"] - ref["qnorm"]).abs().max() > 0.1
        assert model.spectra_spec.q_hook == "rot_q"
    windowed = [w for w in model.spectra_spec.windows if w]
    assert windowed == (
        [] if name not in ("mistral", "gemma2", "phi3") else [WINDOW] * len(windowed)
    )
    if name == "gemma2":  # alternating sliding and global layers, soft-capped logits
        assert model.spectra_spec.windows == (WINDOW, None, WINDOW)
        assert model.spectra_spec.softcap == 5.0


def test_layer_windows_follow_layer_types_and_use_sliding_window():
    from transformers import Gemma2Config, MistralConfig, Qwen2Config

    assert layer_windows(MistralConfig(sliding_window=16, num_hidden_layers=2), 2) == (16, 16)
    gemma = Gemma2Config(sliding_window=16, num_hidden_layers=4)
    assert layer_windows(gemma, 4) == (16, None, 16, None)
    qwen = Qwen2Config(use_sliding_window=True, sliding_window=16, max_window_layers=1)
    assert layer_windows(qwen, qwen.num_hidden_layers)[1:3] == (16, 16)
    assert layer_windows(Qwen2Config(sliding_window=16, num_hidden_layers=2), 2) == (None, None)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("MambaConfig", "state-space or recurrent model"),
        ("BloomConfig", "ALiBi position bias"),
        ("JambaConfig", "mixes attention with state-space"),
        ("GptOssConfig", "learned sink logit"),
        ("DeepseekV3Config", "multi-head latent attention"),
    ],
)
def test_models_spectra_cannot_measure_are_refused_in_one_sentence(config, message):
    import transformers

    cfg = getattr(transformers, config)()
    with pytest.raises(SpectraError, match=message) as err:
        check_measurable(cfg)
    assert str(err.value).startswith("Spectra cannot measure ") and "\n" not in str(err.value)


def test_an_unmeasurable_folder_is_refused_before_its_weights_load(tmp_path):
    from transformers import FalconConfig

    FalconConfig(alibi=True, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                 vocab_size=50).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(SpectraError, match="Spectra cannot measure FalconForCausalLM: it adds"):
        load_model(str(tmp_path), device="cpu")
