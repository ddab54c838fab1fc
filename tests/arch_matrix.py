"""Tiny random-weight models of every architecture family Spectra measures, built offline from
transformers configs (2 layers, small widths): the test matrix of issue 13."""

from __future__ import annotations

from typing import Any

WINDOW = 8  # shorter than the test context, so sliding layers really slide
CTX = 24
COMMON = {"vocab_size": 300, "max_position_embeddings": 256, "tie_word_embeddings": False}
LLAMA_LIKE = {
    **COMMON,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
}

MATRIX: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", LLAMA_LIKE),
    "mistral": ("MistralConfig", {**LLAMA_LIKE, "sliding_window": WINDOW}),
    "qwen2": ("Qwen2Config", {**LLAMA_LIKE}),
    "qwen3": ("Qwen3Config", {**LLAMA_LIKE}),
    "olmo2": ("Olmo2Config", {**LLAMA_LIKE}),
    "gemma2": (
        "Gemma2Config",
        {
            **LLAMA_LIKE,
            "num_hidden_layers": 3,
            "sliding_window": WINDOW,
            "attn_logit_softcapping": 5.0,
            "query_pre_attn_scalar": 24,
        },
    ),
    "phi3": ("Phi3Config", {**LLAMA_LIKE, "sliding_window": WINDOW, "pad_token_id": 0}),
    "gpt2": (
        "GPT2Config",
        {**COMMON, "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 256},
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        {
            **COMMON,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "rotary_pct": 0.25,
        },
    ),
}


def build_config(name: str) -> Any:
    import transformers

    cls, kwargs = MATRIX[name]
    return getattr(transformers, cls)(**kwargs)


def save_tiny_model(name: str, folder, seed: int = 0):
    """Write the tiny random model `name` as a Hugging Face folder; return the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_config(name))
    with torch.no_grad():  # larger weights than the init: sharper, more varied attention
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    model.save_pretrained(folder)
    return folder
