"""Fixtures of the Phase 2 tests: a tiny Llama with its own small tokenizer, a corpus of eight
short documents, and one finished run on them (the real code on small inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from budget.helpers import run_config, small_tokenizer
from spectra_interp.corpus import load_documents


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Eight documents of a few thousand characters, one per bundled book."""
    folder = tmp_path_factory.mktemp("budget-corpus")
    for doc in load_documents("bundled")[:8]:
        (folder / f"{doc.doc_id}.txt").write_text(doc.text[20_000:24_000])
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, corpus_dir) -> Path:
    """A 2-layer random Llama with grouped-query attention and its small tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("budget-tiny")
    tokenizer = small_tokenizer([p.read_text() for p in sorted(corpus_dir.iterdir())])
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_hidden_layers=2, max_position_embeddings=256,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init: sharper, more varied attention
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def finished(tmp_path_factory, tiny_dir, corpus_dir) -> Path:
    """One finished run of the tiny model, report included."""
    from spectra_interp.budget import run_budget
    from spectra_interp.cli import report_after

    out = tmp_path_factory.mktemp("budget-run") / "run"
    config = run_config(tiny_dir, corpus_dir, out)
    report_after(config, run_budget(config, log=lambda _: None))
    return out
