"""The masked forward against direct computations on tiny models: kept keys and logits."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from arch_matrix import CTX, WINDOW, save_tiny_model

from spectra_interp.budget import arms, mask
from spectra_interp.metrics import keys_for_mass
from spectra_interp.models import load_model
from spectra_interp.models.attention import unbridged

SINK, LOCAL = 1, 2
NAMES = ("llama", "mistral", "gemma2")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget-mask")
    return {
        name: load_model(str(save_tiny_model(name, root / name)), device="cpu", dtype="float32")
        for name in NAMES
    }


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 300, (2, CTX), generator=torch.Generator().manual_seed(5))


def visible_mask(window: int | None) -> torch.Tensor:
    """[query, key]: causal, and inside the window on a sliding layer (written out directly)."""
    q, k = torch.arange(CTX)[:, None], torch.arange(CTX)[None]
    allowed = k <= q
    return allowed & (q - k < window) if window else allowed


def random_counts(model, seed: int) -> torch.Tensor:
    """Keys kept per (window, layer, head, query): anywhere between the fewest and all."""
    spec = model.spectra_spec
    visible = spec.keys_seen(CTX)
    fewest = arms.fewest_keys(visible, SINK, LOCAL)
    g = torch.Generator().manual_seed(seed)
    shape = (2, spec.n_layers, spec.n_heads, CTX)
    share = torch.rand(shape, generator=g)
    counts = fewest[:, None] + (share * (visible - fewest)[:, None]).round().long()
    return torch.minimum(counts, visible[:, None])


def eager(model, tokens, masks=None):
    """transformers' own eager attention; with `masks`, each layer's recorded keep mask is its
    attention mask (an independent implementation of the masked forward)."""
    from transformers import AttentionInterface

    layer_of = {id(b.attn.original_component): i for i, b in enumerate(model.blocks)}

    def recorded(module, query, key, value, attention_mask, **kwargs):
        own = importlib.import_module(type(module).__module__).eager_attention_forward
        keep = masks[layer_of[id(module)]]
        additive = torch.zeros(keep.shape).masked_fill(~keep, -math.inf)
        return own(module, query, key, value, additive, **kwargs)

    AttentionInterface.register("spectra_test_recorded", recorded)
    with torch.inference_mode(), unbridged(model) as hf:
        previous = hf.config._attn_implementation
        hf.config._attn_implementation = "spectra_test_recorded" if masks else "eager"
        try:
            return hf(input_ids=tokens, use_cache=False, output_attentions=masks is None)
        finally:
            hf.config._attn_implementation = previous


@pytest.mark.parametrize("name", NAMES)
def test_dense_pass_is_the_models_own_forward(models, tokens, name):
    model = models[name]
    dense = mask.forward(model, tokens, mask.mask_state(model, SINK, LOCAL))
    torch.testing.assert_close(dense, eager(model, tokens).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_every_arm_at_full_budget_is_the_dense_pass_exactly(models, tokens, name):
    model = models[name]
    dense = mask.forward(model, tokens, mask.mask_state(model, SINK, LOCAL))
    spec = model.spectra_spec
    full = spec.keys_seen(CTX)[None, :, None].expand(2, -1, spec.n_heads, -1)
    for order in (mask.SCORE, mask.RECENCY):
        run = mask.mask_state(model, SINK, LOCAL, counts=full, order=order)
        assert torch.equal(mask.forward(model, tokens, run), dense), order


@pytest.mark.parametrize("name", NAMES)
def test_kept_keys_are_the_always_kept_and_the_top_scores(models, tokens, name):
    """Layer 0 sees the same input in every pass, so its kept keys can be read off the dense
    pattern of transformers' eager attention: the always-kept keys, then the heaviest (the
    earlier key first among equal weights, as where Gemma-2's soft cap saturates)."""
    model = models[name]
    spec = model.spectra_spec
    counts = random_counts(model, seed=1)
    run = mask.mask_state(model, SINK, LOCAL, counts=counts, keep_masks=True)
    mask.forward(model, tokens, run)
    weights = eager(model, tokens).attentions[0]
    visible = visible_mask(spec.windows[0])
    for b in range(2):
        for h in range(spec.n_heads):
            for i in range(CTX):
                seen = visible[i].clone()
                always = seen & ((torch.arange(CTX) < SINK) | (torch.arange(CTX) > i - LOCAL))
                rest = weights[b, h, i].masked_fill(~seen | always, -1.0)
                n_top = int(counts[b, 0, h, i]) - int(always.sum())
                want = always.clone()
                want[rest.argsort(descending=True, stable=True)[:n_top]] = True
                assert torch.equal(run.masks[0][b, h, i], want), (b, h, i)
    for layer in range(spec.n_layers):
        kept = run.masks[layer]
        assert not (kept & ~visible_mask(spec.windows[layer])).any(), (
            "a future or out-of-window key"
        )
        assert torch.equal(kept.sum(-1), counts[:, layer]), layer
        assert torch.equal(run.kept[layer], counts[:, layer])


@pytest.mark.parametrize("name", NAMES)
def test_masked_logits_equal_eager_attention_under_the_recorded_masks(models, tokens, name):
    model = models[name]
    for order in (mask.SCORE, mask.RECENCY):
        run = mask.mask_state(model, SINK, LOCAL, counts=random_counts(model, 2), order=order,
                            keep_masks=True)  # fmt: skip
        logits = mask.forward(model, tokens, run)
        dense = mask.forward(model, tokens, mask.mask_state(model, SINK, LOCAL))
        assert (logits - dense).abs().max() > 1e-2, "the masks change the output"
        direct = eager(model, tokens, run.masks).logits
        torch.testing.assert_close(logits, direct, atol=1e-5, rtol=0)


def test_the_recency_arm_keeps_the_sink_and_the_most_recent_keys(models, tokens):
    model = models["llama"]
    counts = random_counts(model, 3)
    run = mask.mask_state(model, SINK, LOCAL, counts=counts, order=mask.RECENCY, keep_masks=True)
    mask.forward(model, tokens, run)
    for i in range(CTX):
        k = int(counts[0, 1, 0, i])
        want = torch.zeros(CTX, dtype=torch.bool)
        want[:SINK] = True
        want[i - (k - SINK) + 1 : i + 1] = True
        want[i + 1 :] = False
        assert torch.equal(run.masks[1][0, 0, i], want if i + 1 > k else visible_mask(None)[i])


def test_the_union_over_a_gqa_group_counts_keys_read_once(models, tokens):
    model = models["llama"]
    run = mask.mask_state(model, SINK, LOCAL, counts=random_counts(model, 4), keep_masks=True)
    mask.forward(model, tokens, run)
    kept = run.masks[1]  # [b, head, q, k]; heads (0, 1) share KV head 0
    assert torch.equal(run.union[1][:, 0], (kept[:, 0] | kept[:, 1]).sum(-1))
    assert (run.union[1][:, 0] >= run.kept[1][:, :2].amax(1)).all()


def test_mass_counts_are_the_smallest_set_holding_the_mass():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(1, 2, 6, 10, generator=g) * 2, dim=-1)
    always = torch.zeros(1, 2, 6, 10, dtype=torch.bool)
    always[..., 0] = True
    visible = torch.full((6,), 10)
    masses = torch.tensor([0.3, 0.8, 0.95, 1.0])
    got = mask.mass_counts(p, always, visible, masses)
    plain = mask.mass_counts(p, None, visible, masses)
    for idx in [(0, h, i) for h in range(2) for i in range(6)]:
        weights = p[idx][1:].sort(descending=True).values
        for m, mass in enumerate(masses.tolist()):
            held = p[idx][0] + torch.cat([torch.zeros(1), weights.cumsum(0)])
            want = 1 + int((held < mass - 1e-6).sum()) if mass < 1 else 10
            assert int(got[idx][m]) == min(want, 10), (idx, mass)
            if mass < 1:
                k_p = keys_for_mass(p[idx], mass)
                assert int(plain[idx][m]) == int(k_p), (idx, mass)


def test_oracle_at_mass_one_is_the_dense_pass(models, tokens):
    model = models["mistral"]
    dense_run = mask.mask_state(model, SINK, LOCAL, masses=(1.0,))
    dense = mask.forward(model, tokens, dense_run)
    counts = dense_run.stacked("by_mass")[..., 0]
    spec = model.spectra_spec
    assert torch.equal(counts, spec.keys_seen(CTX)[None, :, None].expand_as(counts))
    oracle = mask.forward(model, tokens, mask.mask_state(model, SINK, LOCAL, counts=counts))
    assert torch.equal(oracle, dense)
    assert spec.windows == (WINDOW,) * spec.n_layers


def test_the_attention_function_outside_a_pass_is_an_error():
    x = torch.zeros(1, 1, 2, 4)
    with pytest.raises(RuntimeError, match="outside"):
        mask.BUDGET(torch.nn.Module(), x, x, x, None)
