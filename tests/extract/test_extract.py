"""Extraction: stream and cache agree, both match an independent plain-transformers computation."""

import pytest
import torch

from spectra_interp import models
from spectra_interp.errors import SpectraError
from spectra_interp.extract import extract


@pytest.fixture(scope="module")
def real_tokens(smollm2_tokenizer):
    from spectra_interp.corpus import load_documents

    text = load_documents("bundled", max_docs=1)[0].text
    return torch.tensor(smollm2_tokenizer(text[50_000:60_000])["input_ids"][:128])[None]


def reference_norms_and_entropies(tokens):
    """‖q‖ from forward hooks on q_proj and H from output_attentions, in plain transformers."""
    from transformers import AutoModelForCausalLM

    folder = models.gguf_as_hf_folder(models.smollm2_gguf_path())
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    n_heads, d_head = model.config.num_attention_heads, model.config.head_dim
    norms = {}

    def keep(layer):
        def hook(module, inputs, output):
            q = output.view(*output.shape[:2], n_heads, d_head)
            norms[layer] = q.norm(dim=-1).transpose(1, 2)

        return hook

    for i, block in enumerate(model.model.layers):
        block.self_attn.q_proj.register_forward_hook(keep(i))
    with torch.inference_mode():
        out = model(tokens, output_attentions=True)
    entropy = torch.stack([-(torch.xlogy(a, a)).sum(-1) for a in out.attentions], dim=1)
    qnorm = torch.stack([norms[i] for i in range(len(norms))], dim=1)
    return qnorm, entropy


def test_every_head_matches_plain_transformers(smollm2, real_tokens):
    qnorm, entropy = reference_norms_and_entropies(real_tokens)
    got = extract(smollm2, real_tokens)
    assert got.qnorm.shape == (1, 30, 9, 128) == qnorm.shape
    torch.testing.assert_close(got.qnorm, qnorm, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.entropy, entropy, atol=1e-4, rtol=0)
    assert got.n_keys.tolist() == [list(range(1, 129))] * 30


def test_cache_agrees_with_stream(smollm2, real_tokens):
    batch = torch.cat([real_tokens[:, :64], real_tokens[:, 64:]])
    stream = extract(smollm2, batch, method="stream")
    for layers_per_pass in (7, 30):
        cache = extract(smollm2, batch, method="cache", layers_per_pass=layers_per_pass)
        torch.testing.assert_close(cache.qnorm, stream.qnorm, atol=1e-5, rtol=0)
        torch.testing.assert_close(cache.entropy, stream.entropy, atol=1e-5, rtol=0)


def test_gqa_statistics_are_per_query_head(tiny_model):
    got = extract(tiny_model, torch.randint(0, 300, (2, 20)))
    assert got.qnorm.shape == (2, 3, 4, 20)
    assert not torch.allclose(got.qnorm[:, :, 0], got.qnorm[:, :, 1])
    assert torch.isfinite(got.entropy).all() and (got.entropy[..., 0].abs() < 1e-6).all()


def test_stream_holds_one_layer_of_patterns_at_a_time(tiny_model):
    """When layer l's pattern is made, no earlier layer's pattern tensor is still alive: the
    reduction keeps no reference and the forward collects no attentions."""
    import weakref

    from spectra_interp.models import hooks

    alive_at = []
    refs = []

    def watch(pattern, hook):
        alive_at.append(sum(ref() is not None for ref in refs))
        refs.append(weakref.ref(pattern))

    real = tiny_model.run_with_hooks

    def with_watch(tokens, fwd_hooks, **kwargs):
        watched = [(hooks.attn_hook("pattern", i), watch) for i in range(3)]
        return real(tokens, fwd_hooks=fwd_hooks + watched, **kwargs)

    tiny_model.run_with_hooks = with_watch
    try:
        got = extract(tiny_model, torch.randint(0, 300, (1, 20)), method="stream")
    finally:
        del tiny_model.run_with_hooks
    assert alive_at == [0, 0, 0] and got.entropy.shape == (1, 3, 4, 20)


def test_ragged_input_is_rejected(tiny_model):
    with pytest.raises(SpectraError, match="equal length"):
        extract(tiny_model, [[1, 2, 3], [4, 5]])


def test_bad_method_and_too_long_windows(tiny_model):
    with pytest.raises(SpectraError, match="Unknown extraction method"):
        extract(tiny_model, torch.ones(1, 4, dtype=torch.long), method="fast")
    with pytest.raises(SpectraError, match="exceed the model's 256"):
        extract(tiny_model, torch.ones(1, 300, dtype=torch.long))
    with pytest.raises(SpectraError, match="layers_per_pass"):
        extract(tiny_model, torch.ones(1, 4, dtype=torch.long), method="cache", layers_per_pass=0)


def test_every_registered_method_runs_and_says_where_it_reads_q(tiny_model):
    from spectra_interp.config import METHODS
    from spectra_interp.extract import q_source

    tokens = torch.randint(0, 100, (1, 12))
    for name in METHODS:
        got = extract(tiny_model, tokens, method=name, layers_per_pass=1)
        assert got.qnorm.shape[-1] == 12 and torch.isfinite(got.entropy).all(), name
        source = q_source(tiny_model, name)
        assert source["method"] == name and source["source"] and source["why"], name
    assert "kernels" in q_source(tiny_model, "fused")
