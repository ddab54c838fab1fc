"""The sampled queries' extras against real forward passes: H with the query scaled by alpha in
one layer, the gain by finite differences, max attention and k_eff from the pattern."""

from __future__ import annotations

import math

import pytest
import torch
from arch_matrix import CTX, save_tiny_model
from transformers import AutoModelForCausalLM

from spectra_interp.config import METHODS, Q_SCALES
from spectra_interp.extract import SampleRequest, extract
from spectra_interp.metrics import keys_for_mass
from spectra_interp.models import load_model

LAYER = 1
MASS = 0.9


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 300, (2, CTX), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def request_():
    positions = torch.tensor([[3, 9, 17, 23], [1, 12, 20, 22]])
    return SampleRequest(positions, Q_SCALES, MASS)


def scaled_patterns(folder, tokens, module: str, alpha: float) -> torch.Tensor:
    """Layer LAYER's pattern of plain transformers with the output of `module` (in that layer's
    attention) multiplied by alpha."""
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    attn = model.model.layers[LAYER].self_attn
    handle = getattr(attn, module).register_forward_hook(lambda m, i, out: out * alpha)
    with torch.inference_mode():
        out = model(tokens, output_attentions=True)
    handle.remove()
    return out.attentions[LAYER]


def rows(pattern: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[b, h, q, k] -> the sampled queries' rows [b, h, k_sample, key]."""
    return pattern[torch.arange(pattern.shape[0])[:, None], :, positions].transpose(1, 2)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(torch.xlogy(p, p)).sum(-1)


@pytest.mark.parametrize(("name", "query_module"), [("qwen3", "q_norm"), ("gemma2", "q_proj")])
def test_scaled_entropies_equal_a_forward_with_the_query_scaled(
    name, query_module, tmp_path, tokens, request_
):
    """Qwen3: the query that meets the keys is q_norm's output; Gemma-2: the soft cap bends the
    scaled logits, which scaling the query in the model does too."""
    folder = save_tiny_model(name, tmp_path / name)
    model = load_model(str(folder), device="cpu", dtype="float32")
    got = {m: extract(model, tokens, method=m, sample=request_).extras for m in METHODS}
    for i, alpha in enumerate(Q_SCALES):
        pattern = rows(scaled_patterns(folder, tokens, query_module, alpha), request_.positions)
        for method, extras in got.items():
            torch.testing.assert_close(
                extras["scaled_entropy"][:, LAYER, ..., i], entropy(pattern), atol=1e-4,
                rtol=0, msg=f"{method} alpha={alpha}",
            )  # fmt: skip
    plain = rows(scaled_patterns(folder, tokens, query_module, 1.0), request_.positions)
    for extras in got.values():
        torch.testing.assert_close(extras["max_attn"][:, LAYER], plain.max(-1).values, atol=1e-5,
                                   rtol=0)  # fmt: skip
        assert torch.equal(extras["k_eff"][:, LAYER], keys_for_mass(plain, MASS))
    step = 0.01
    up = entropy(rows(scaled_patterns(folder, tokens, query_module, math.exp(step)),
                      request_.positions))  # fmt: skip
    down = entropy(rows(scaled_patterns(folder, tokens, query_module, math.exp(-step)),
                        request_.positions))  # fmt: skip
    finite = (up - down) / (2 * step)
    torch.testing.assert_close(got["fused"]["gain"][:, LAYER], finite, atol=2e-3, rtol=1e-2)


def test_scaling_the_raw_projection_of_a_qk_norm_model_changes_nothing(tmp_path, tokens):
    """Why ‖q‖ must be read after the QK-norm: a scaled q_proj output is normalised away."""
    folder = save_tiny_model("qwen3", tmp_path / "qwen3")
    torch.testing.assert_close(
        scaled_patterns(folder, tokens, "q_proj", 2.0),
        scaled_patterns(folder, tokens, "q_proj", 1.0),
        atol=1e-5,
        rtol=0,
    )
    assert (
        scaled_patterns(folder, tokens, "q_norm", 2.0)
        - scaled_patterns(folder, tokens, "q_norm", 1.0)
    ).abs().max() > 0.01
