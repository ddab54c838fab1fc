"""GGUF sources: any architecture transformers reads from GGUF loads the same way, converted
once; a GGUF of an architecture Spectra cannot measure is refused before conversion."""

from __future__ import annotations

import pytest
import torch
from arch_matrix import MATRIX, save_tiny_model
from gguf_factory import write_header_only, write_qwen3_gguf

from spectra_interp.errors import SpectraError
from spectra_interp.extract import extract
from spectra_interp.models import load_model, smollm2_gguf_path
from spectra_interp.models.sources import gguf_architecture, with_architectures


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_qwen3_gguf_loads_like_its_hugging_face_folder(tmp_path, cache, monkeypatch):
    """QK-norm architecture from a GGUF file (SmolLM2's tokenizer, head_dim 128 as Qwen3's
    GGUF config implies): converted once, measured exactly as the folder it came from."""
    cls, kwargs = MATRIX["qwen3"]
    vocab = {**kwargs, "vocab_size": 49152, "tie_word_embeddings": True, "head_dim": 128}
    monkeypatch.setitem(MATRIX, "qwen3-gguf", (cls, vocab))
    folder = save_tiny_model("qwen3-gguf", tmp_path / "hf")
    path = write_qwen3_gguf(folder, tmp_path / "tiny-qwen3.gguf", smollm2_gguf_path())
    assert gguf_architecture(path) == "qwen3"
    from_gguf = load_model(str(path), device="cpu", dtype="float32")
    from_folder = load_model(str(folder), device="cpu", dtype="float32")
    assert from_gguf.spectra_spec == from_folder.spectra_spec
    assert from_gguf.spectra_spec.q_hook == "rot_q"
    assert from_gguf.spectra_placeholder_tokenizer is False
    tokens = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    a, b = extract(from_gguf, tokens), extract(from_folder, tokens)
    torch.testing.assert_close(a.qnorm, b.qnorm, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.entropy, b.entropy, atol=1e-6, rtol=0)
    converted = list((cache / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "config.json").is_file()


@pytest.mark.parametrize(
    ("arch", "reason"),
    [
        ("mamba", "state-space or recurrent model"),
        ("rwkv6", "state-space or recurrent model"),
        ("bloom", "ALiBi position bias"),
        ("jamba", "mixes attention with state-space"),
        ("bert", "not a causal decoder"),
    ],
)
def test_a_gguf_spectra_cannot_measure_is_refused_in_one_sentence(tmp_path, cache, arch, reason):
    path = write_header_only(tmp_path / f"{arch}.gguf", arch)
    with pytest.raises(SpectraError, match=reason) as err:
        load_model(str(path), device="cpu")
    assert str(err.value).startswith(f"{arch}.gguf holds a {arch} model, which ")
    assert "\n" not in str(err.value) and not cache.exists()


def test_a_config_without_architectures_gets_transformers_class():
    from transformers import Qwen3Config

    config = Qwen3Config(num_hidden_layers=1)
    config.architectures = None
    assert with_architectures(config).architectures == ["Qwen3ForCausalLM"]
    bare = Qwen3Config(num_hidden_layers=1)
    bare.model_type = "no-such-model"
    bare.architectures = None
    with pytest.raises(SpectraError, match="no causal language model"):
        with_architectures(bare)
