"""Spectra's keys seen against the mask the model really applies (issue 23, fault 1).

The reference is plain transformers: eager attention with output_attentions=True on the same
tiny models, fp32. A configured window of 0 (what some fine-tuning tools write for "no window")
is refused in one sentence naming the layer and the config field, before anything is written,
by `spectra sweep` and `spectra budget` alike; a disagreement the config check cannot see is
caught by the probe on the run's first window, and nothing all-zero or NaN reaches a shard.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from arch_matrix import CTX, WINDOW, save_tiny_model
from budget.helpers import RUN_FLAGS, small_tokenizer

from spectra_interp.corpus import load_documents
from spectra_interp.errors import SpectraError
from spectra_interp.models import check_masks, load_model
from spectra_interp.models.masks import applied_masks, expected_allowed
from spectra_interp.results import store
from spectra_interp.results.layout import SweepLayout

ZERO_WINDOW_CTX = 64
TINY = {
    "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2,
    "max_position_embeddings": 256, "tie_word_embeddings": False,
}  # fmt: skip
ZERO_WINDOW = {
    "mistral": ("MistralConfig", {"sliding_window": 0}),
    "qwen2": ("Qwen2Config", {"sliding_window": 0, "use_sliding_window": True,
                              "max_window_layers": 0}),
}  # fmt: skip


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mask-corpus")
    for doc in load_documents("bundled")[:8]:
        (folder / f"{doc.doc_id}.txt").write_text(doc.text[20_000:23_000])
    return folder


def _save(folder, cls: str, extra: dict, corpus_dir) -> str:
    import transformers
    from transformers import AutoModelForCausalLM

    tokenizer = small_tokenizer([p.read_text() for p in sorted(corpus_dir.iterdir())])
    config = getattr(transformers, cls)(vocab_size=len(tokenizer), **TINY, **extra)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _reference_attention(folder: str, n_pos: int) -> torch.Tensor | None:
    """Plain transformers' eager attention of layer 0 on random ids, or None if it fails."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    seed = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, n_pos), generator=seed)
    try:
        with torch.no_grad():
            return model(ids, output_attentions=True).attentions[0][0]
    except RuntimeError:
        return None


@pytest.mark.parametrize("name", sorted(ZERO_WINDOW))
def test_window_of_zero_is_not_a_causal_mask_in_transformers(name, tmp_path, corpus_dir):
    """The reference: transformers' own eager forward on the config does not give causal
    attention (it fails, or lets queries see future keys or none), so measuring it as causal
    would be wrong."""
    cls, extra = ZERO_WINDOW[name]
    folder = _save(tmp_path / name, cls, extra, corpus_dir)
    attention = _reference_attention(folder, ZERO_WINDOW_CTX)
    if attention is not None:
        causal = expected_allowed(ZERO_WINDOW_CTX, None)
        assert not torch.equal(attention.sum(0) > 0, causal)
    with pytest.raises(SpectraError, match=r"`sliding_window` = 0 .*layer 0"):
        load_model(folder, device="cpu", dtype="float32")


def _cli(command: str, model: str, corpus, out) -> subprocess.CompletedProcess:
    flags = ["--ctx", str(ZERO_WINDOW_CTX), "--max-windows", "4", "--device", "cpu",
             "--no-progress", "--no-report"]  # fmt: skip
    if command == "budget":
        flags += ["--calibration-windows", "2", "--budgets", RUN_FLAGS["budgets"]]
    argv = [sys.executable, "-m", "spectra_interp.cli", command, "--model", model,
            "--corpus", str(corpus), "--out", str(out), *flags]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["sweep", "budget"])
def test_sweep_and_budget_refuse_a_window_of_zero_writing_nothing(command, tmp_path, corpus_dir):
    cls, extra = ZERO_WINDOW["mistral"]
    folder = _save(tmp_path / "model", cls, extra, corpus_dir)
    out = tmp_path / "out"
    done = _cli(command, folder, corpus_dir, out)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "layer 0" in lines[0] and "`sliding_window` = 0" in lines[0]
    assert lines[0].count(". ") == 0  # one sentence
    assert not out.exists()


@pytest.mark.parametrize("name", ["mistral", "gemma2", "llama"])
def test_keys_seen_agree_with_the_reference_mask(name, tmp_path):
    """On models whose config is sound, the applied masks equal Spectra's keys seen, and both
    equal where plain transformers' eager attention puts weight."""
    from transformers import AutoModelForCausalLM

    folder = save_tiny_model(name, tmp_path / name)
    model = load_model(str(folder), device="cpu", dtype="float32")
    tokens = torch.randint(0, 300, (1, CTX), generator=torch.Generator().manual_seed(1))
    check_masks(model, tokens[0])
    reference = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = reference(tokens, output_attentions=True).attentions
    spec = model.spectra_spec
    for layer, pattern in enumerate(attentions):
        seen = (pattern[0] > 0).sum(-1)  # [head, pos]
        assert torch.equal(seen, spec.keys_seen(CTX)[layer].expand_as(seen))
    assert any(w == WINDOW for w in spec.windows) or name == "llama"
    assert len(applied_masks(model, tokens, "sdpa")) == spec.n_layers


def test_a_disagreement_is_refused_naming_layer_and_field(tmp_path, monkeypatch):
    folder = save_tiny_model("gemma2", tmp_path / "gemma2")
    model = load_model(str(folder), device="cpu", dtype="float32")
    spec = model.spectra_spec
    windows = list(spec.windows)
    windows[1] = WINDOW  # layer 1 is a full layer; say it slides
    model.spectra_spec = dataclasses.replace(spec, windows=tuple(windows))
    tokens = torch.randint(0, 300, (CTX,), generator=torch.Generator().manual_seed(2))
    with pytest.raises(SpectraError) as err:
        check_masks(model, tokens)
    message = str(err.value)
    assert "at layer 1 " in message and "`layer_types`[1] = 'full_attention'" in message
    assert f"query {WINDOW} see {WINDOW + 1} keys where Spectra counts {WINDOW}" in message


def test_the_sweep_refuses_a_disagreement_before_any_shard(tmp_path, corpus_dir, monkeypatch):
    """The probe runs on the first window, after loading, before the first shard."""
    from spectra_interp import settings
    from spectra_interp.config import SweepConfig
    from spectra_interp.models import load as load_module
    from spectra_interp.sweep import run_sweep

    folder = _save(tmp_path / "model", "LlamaConfig", {}, corpus_dir)
    real_spec = load_module._spec

    def wrong_spec(bridge, source):
        spec = real_spec(bridge, source)
        return dataclasses.replace(spec, windows=(None, 5))

    monkeypatch.setattr(load_module, "_spec", wrong_spec)
    out = tmp_path / "out"
    config = settings.build(SweepConfig, {
        "model": folder, "corpus": str(corpus_dir), "ctx": 32, "max_windows": 2,
        "device": "cpu", "progress": False, "report": False, "out": str(out),
        "controls": "none",
    })  # fmt: skip
    with pytest.raises(SpectraError, match="at layer 1 "):
        run_sweep(config, log=lambda _: None)
    assert not SweepLayout(out).done_windows("trained")


@pytest.mark.parametrize(
    ("name", "value"),
    [("sample_entropy", np.zeros((2, 4, 8), np.float32)),
     ("sample_qnorm", np.full((2, 4, 8), np.nan, np.float32)),
     ("stats", np.array([1.0, np.inf]))],
)  # fmt: skip
def test_no_all_zero_or_nan_result_is_written(name, value, tmp_path):
    layout = SweepLayout(tmp_path)
    arrays = {"sample_qnorm": np.ones((2, 4, 8), np.float32), "stats": np.ones(3), name: value}
    with pytest.raises(SpectraError, match="not written"):
        store.write_shard(layout, "trained", 0, **arrays)
    assert not layout.shard("trained", 0).exists()
