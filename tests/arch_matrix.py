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


def scale_queries_and_keys(model: Any, factor: float) -> None:
    """Multiply each layer's query and key by `factor` (the scores by factor²): the q and k
    projections, or the norm weights of a QK-norm model, in place."""
    import torch

    config = model.config
    layers = getattr(model.base_model, "layers", None) or model.base_model.h
    with torch.no_grad():
        for layer in layers:
            attn = next(
                getattr(layer, n) for n in ("self_attn", "attn", "attention") if hasattr(layer, n)
            )
            if hasattr(attn, "q_norm"):
                attn.q_norm.weight.mul_(factor)
                attn.k_norm.weight.mul_(factor)
            elif hasattr(attn, "q_proj"):
                for proj in (attn.q_proj, attn.k_proj):
                    for p in proj.parameters():
                        p.mul_(factor)
            elif hasattr(attn, "qkv_proj"):  # phi3: rows [q | k | v]
                q_and_k = (config.num_attention_heads + config.num_key_value_heads) * attn.head_dim
                attn.qkv_proj.weight[:q_and_k].mul_(factor)
            elif hasattr(attn, "c_attn"):  # gpt2: Conv1D columns [q | k | v]
                attn.c_attn.weight[:, : 2 * config.n_embd].mul_(factor)
                attn.c_attn.bias[: 2 * config.n_embd].mul_(factor)
            else:  # gpt_neox: rows interleave [q | k | v] per head
                heads = config.num_attention_heads
                weight = attn.query_key_value.weight.view(heads, 3, -1, config.hidden_size)
                bias = attn.query_key_value.bias.view(heads, 3, -1)
                weight[:, :2].mul_(factor)
                bias[:, :2].mul_(factor)


def save_tiny_model(name: str, folder, seed: int = 0, qk_scale: float = 1.0):
    """Write the tiny random model `name` (queries and keys scaled by `qk_scale`) as a Hugging
    Face folder; return the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_config(name))
    with torch.no_grad():  # larger weights than the init: sharper, more varied attention
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    if qk_scale != 1.0:
        scale_queries_and_keys(model, qk_scale)
    model.save_pretrained(folder)
    return folder
