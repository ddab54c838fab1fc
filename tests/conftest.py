"""Shared fixtures: offline hub, the SmolLM2 model and tokenizer, and a tiny random-init Llama."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 3,
    "max_position_embeddings": 256,
    "vocab_size": 300,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from spectra_interp.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2():
    from spectra_interp.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A local Hugging Face folder holding a 3-layer random Llama with grouped-query attention."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**TINY_LLAMA)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_llama_dir):
    from spectra_interp.models import load_model

    return load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
