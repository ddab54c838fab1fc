"""Helpers of the Phase 2 tests: the tiny run's settings and a small tokenizer."""

from __future__ import annotations

from pathlib import Path

CTX = 64
BUDGETS = "0.3,0.5"
# A tiny run: 2 layers x 4 query heads (2 KV heads), 64 tokens, 4 + 6 windows of 8 documents.
RUN_FLAGS = {
    "ctx": CTX,
    "max_windows": 6,
    "calibration_windows": 4,
    "skip_first": 4,
    "recent": 2,
    "budgets": BUDGETS,
    "n_boot": 50,
    "device": "cpu",
    "dtype": "float32",
    "progress": False,
}


def small_tokenizer(texts: list[str], vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on `texts` (no BOS), so a tiny model's vocabulary is
    small."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def run_config(model_dir: Path, corpus: Path, out: Path, **overrides):
    from spectra_interp import settings
    from spectra_interp.config import BudgetConfig

    values = {**RUN_FLAGS, "model": str(model_dir), "corpus": str(corpus), "out": str(out)}
    return settings.build(BudgetConfig, {**values, **overrides})


def run_argv(model_dir: Path, corpus: Path, out: Path) -> list[str]:
    """The same run as command-line flags."""
    values = {**RUN_FLAGS, "model": model_dir, "corpus": corpus, "out": out}
    argv = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        argv += [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return argv
