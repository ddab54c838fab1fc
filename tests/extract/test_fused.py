"""The fused method: every kernel gives the exact entropy, soft-capped layers fall back, and the
bridge is whole again after the wrapped model ran."""

from __future__ import annotations

import math

import pytest
import torch
from arch_matrix import CTX, WINDOW, save_tiny_model

from spectra_interp.extract import extract, fused, q_source
from spectra_interp.models import load_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    return {
        name: load_model(str(save_tiny_model(name, root / name)), device="cpu", dtype="float32")
        for name in ("llama", "mistral", "gemma2")
    }


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 300, (2, CTX), generator=torch.Generator().manual_seed(3))


def _pattern_entropy(q, k, allowed, scale, softcap=None):
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    p = torch.softmax(s.masked_fill(~allowed, -math.inf), dim=-1)
    return p, -(torch.xlogy(p, p)).sum(-1)


@pytest.mark.parametrize("window", [None, 5])
def test_each_kernel_gives_the_pattern_entropy_and_the_output(window):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=g) * 2 for _ in range(3))
    allowed = torch.ones(40, 40, dtype=torch.bool).tril()
    if window:
        allowed &= ~torch.ones(40, 40, dtype=torch.bool).tril(-window)
    mask = None if window is None else allowed[None, None]
    p, want = _pattern_entropy(q, k, allowed, 0.3)
    want_out = p @ v
    for out, entropy in (
        fused.flash_cpu_attention(q, k, v, mask, 0.3),
        fused.flex_attention_call(q, k, v, window, 0.3),
        fused.exact_attention(q, k, v, allowed[None, None], 0.3, None, block=16),
    ):
        torch.testing.assert_close(entropy, want, atol=2e-5, rtol=0)
        torch.testing.assert_close(out, want_out, atol=2e-5, rtol=0)


def test_exact_kernel_applies_the_soft_cap_after_the_scale():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 12, 4, generator=g) * 3 for _ in range(3))
    allowed = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    _, want = _pattern_entropy(q, k, allowed, 0.5, softcap=2.0)
    _, uncapped = _pattern_entropy(q, k, allowed, 0.5)
    _, got = fused.exact_attention(q, k, v, allowed, 0.5, 2.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - uncapped).abs().max() > 0.05


@pytest.mark.parametrize("name", ["llama", "mistral", "gemma2"])
def test_fused_kernels_agree_with_the_hook_methods(models, tokens, name):
    model = models[name]
    stream = extract(model, tokens, method="stream")
    for kernel in fused.KERNELS:
        got = fused.run(model, model.spectra_spec, tokens, kernel=kernel)
        qnorm = torch.stack([got.qnorm[i] for i in range(model.spectra_spec.n_layers)], dim=1)
        entropy = torch.stack([got.entropy[i] for i in range(model.spectra_spec.n_layers)], dim=1)
        torch.testing.assert_close(qnorm, stream.qnorm, atol=1e-4, rtol=0, msg=kernel)
        torch.testing.assert_close(entropy, stream.entropy, atol=1e-4, rtol=0, msg=kernel)
        if name == "gemma2":  # soft-capped: every layer falls back to the exact kernel
            assert set(got.used.values()) == {"exact"}
        else:
            assert set(got.used.values()) == {kernel}


def test_config_json_says_which_kernel_each_layer_used(models):
    gemma, llama = models["gemma2"], models["llama"]
    plan = q_source(gemma, "fused")["kernels"]
    assert plan == {str(i): f"exact ({fused.SOFTCAP_REASON})" for i in range(3)}
    assert set(q_source(llama, "fused")["kernels"].values()) == {"flash_cpu"}
    assert q_source(llama, "stream")["source"] == "blocks.{layer}.attn.hook_q"
    assert gemma.spectra_spec.windows == (WINDOW, None, WINDOW)


def test_the_bridge_is_whole_after_the_fused_forward(models, tokens):
    model = models["mistral"]
    before = {name: type(m) for name, m in model.original_model.named_modules()}
    implementation = model.original_model.config._attn_implementation
    extract(model, tokens, method="fused")
    after = {name: type(m) for name, m in model.original_model.named_modules()}
    assert after == before and model.original_model.config._attn_implementation == implementation
    with torch.inference_mode():
        logits = model(tokens)
    assert logits.shape == (2, CTX, 300) and torch.isfinite(logits).all()


def test_the_attention_function_outside_a_run_is_an_error():
    x = torch.zeros(1, 1, 2, 4)
    with pytest.raises(RuntimeError, match="outside"):
        fused.FUSED(torch.nn.Module(), x, x, x, None)
