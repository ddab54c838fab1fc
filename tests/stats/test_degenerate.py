"""Degenerate heads (issue 23, fault 3): ‖q‖ or H constant up to rounding.

The inputs are the issue's: a tiny Qwen3 (QK-norm) whose norm weights are at their initial value
of 1, and its random-init control; the reference is plain transformers (a forward hook on
`q_norm`, the query that meets the keys), fp32.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from arch_matrix import CTX, build_config
from budget.helpers import small_tokenizer

from spectra_interp import settings
from spectra_interp.config import SweepConfig
from spectra_interp.corpus import load_documents
from spectra_interp.models.load import randomize_norms
from spectra_interp.stats.degenerate import (
    CONSTANT_H,
    CONSTANT_QNORM,
    SPREAD_FLOOR,
    control_usability,
    degenerate_reasons,
    relative_spread,
    spread_bound,
    spreads,
)
from spectra_interp.stats.verdict import Verdict
from spectra_interp.sweep import run_sweep
from spectra_interp.viz.report import build_report


def test_bound_scales_with_the_dtype():
    assert spread_bound("float32") == pytest.approx(SPREAD_FLOOR)
    assert spread_bound("float16") == pytest.approx(8 * 2**-10)
    assert spread_bound("bfloat16") == pytest.approx(8 * 2**-7)
    with pytest.raises(ValueError, match="int8"):
        spread_bound("int8")


def test_relative_spread_is_robust_to_a_minority_of_outliers():
    rng = np.random.default_rng(0)
    flat = np.full((2, 1, 1, 100), np.log(2.0))
    flat[..., :30] = rng.uniform(0, 3, size=30)  # 30% of tokens anything
    flat[..., 30:] += rng.normal(0, 1e-6, size=70)  # the rest log 2 up to 1e-6
    assert relative_spread(flat)[0, 0] < 1e-5
    varied = rng.lognormal(0, 0.2, size=(2, 1, 1, 100))
    assert relative_spread(varied)[0, 0] > 0.1
    reasons = degenerate_reasons(varied, flat, "float32")
    assert reasons.tolist() == [[CONSTANT_H]]


def _reference_qnorm(hf_model, tokens: torch.Tensor) -> np.ndarray:
    """‖q‖ [window, layer, head, pos] from plain transformers: the output of each `q_norm`."""
    found = []
    handles = [
        layer.self_attn.q_norm.register_forward_hook(
            lambda m, i, out: found.append(torch.linalg.vector_norm(out, dim=-1))
        )
        for layer in hf_model.model.layers
    ]
    with torch.no_grad():
        hf_model(tokens)
    for h in handles:
        h.remove()
    return rearrange_layers(found)


def rearrange_layers(found: list[torch.Tensor]) -> np.ndarray:
    # each [window, pos, head] -> [window, layer, head, pos]
    return torch.stack(found, dim=1).permute(0, 1, 3, 2).numpy()


@pytest.mark.parametrize("random_norms", [False, True])
def test_qk_norm_with_unit_weights_has_constant_qnorm_in_the_reference(random_norms):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config("qwen3")).eval()
    if random_norms:
        assert randomize_norms(model, seed=0) > 0
    tokens = torch.randint(0, 300, (3, CTX), generator=torch.Generator().manual_seed(0))
    qnorm = _reference_qnorm(model, tokens)[..., 1:]
    usable = control_usability(qnorm, "float32")
    if random_norms:
        assert relative_spread(qnorm).min() > 20 * spread_bound("float32")
        assert usable["usable"] and usable["reason"] is None
    else:
        d_head = model.config.head_dim
        np.testing.assert_allclose(qnorm, np.sqrt(d_head), rtol=1e-4)
        assert relative_spread(qnorm).max() <= spread_bound("float32")
        assert not usable["usable"] and "--random-init-norms" in usable["reason"]


@pytest.fixture(scope="module")
def qwen3_run(tmp_path_factory):
    """The sweep on a tiny Qwen3 whose QK-norm weights are 1, controls included."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    root = tmp_path_factory.mktemp("qwen3-degenerate")
    texts = [d.text[20_000:24_000] for d in load_documents("bundled")[:8]]
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(texts):
        (corpus / f"doc{i}.txt").write_text(text)
    tokenizer = small_tokenizer(texts)
    kwargs = {**build_config("qwen3").to_dict(), "vocab_size": len(tokenizer)}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen3Config(**kwargs))
    with torch.no_grad():  # sharper attention, as the architecture matrix does; norms stay 1
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    assert all(
        torch.equal(layer.self_attn.q_norm.weight, torch.ones_like(layer.self_attn.q_norm.weight))
        for layer in model.model.layers
    )
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")

    done: dict[str, tuple] = {}

    def run(name: str, **extra) -> tuple:
        if name not in done:
            done[name] = sweep(name, **extra)
        return done[name]

    def sweep(name: str, **extra) -> tuple:
        out = root / name
        values = {
            "model": str(root / "model"), "corpus": str(corpus), "ctx": 64, "max_windows": 6,
            "n_boot": 50, "sample_per_window": 32, "device": "cpu", "dtype": "float32",
            "progress": False, "report": False, "out": str(out), **extra,
        }  # fmt: skip
        lines: list[str] = []
        run_sweep(settings.build(SweepConfig, values), log=lines.append)
        summary = json.loads((out / "summary.json").read_text())
        table = pd.read_csv(out / "head_stats.csv", keep_default_na=False)
        return table, summary, lines, out

    return run


def test_constant_qnorm_heads_are_left_out_and_counted(qwen3_run):
    table, summary, lines, _ = qwen3_run("plain")
    n_heads = len(table)
    assert (table["degenerate"] == CONSTANT_QNORM).all()
    numeric = table.replace("", np.nan)
    for column in ("pearson_r", "spearman_rho", "temperature_share", "q_fdr", "delta_r2"):
        assert pd.to_numeric(numeric[column]).isna().all(), column
    assert not table["passes"].astype(str).eq("True").any()
    assert summary["degenerate"]["count"] == n_heads
    assert {(h["layer"], h["head"]) for h in summary["degenerate"]["heads"]} == set(
        zip(table["layer"], table["head"], strict=True)
    )
    assert summary["heads_total"] == n_heads and summary["heads_measured"] == 0
    assert summary["passing"]["total"] == 0
    assert summary["beyond_r"]["temperature_share"]["median"] is None
    assert summary["beyond_r"]["delta_r2"]["heads_ci_excludes_0"] == 0
    text = "\n".join(lines)
    assert f"Degenerate heads left out of every count, median and criterion: {n_heads}" in text
    assert "L0H0 (constant ‖q‖)" in text


def test_the_control_refuses_itself_and_the_variant_serves(qwen3_run):
    _, summary, lines, out = qwen3_run("plain")
    control = summary["controls"]["random_init"]
    assert control["usable"] is False and control["mean_r"] is None
    assert control["constant_qnorm_heads"] == summary["degenerate"]["count"]
    assert "cannot serve as a control" in Verdict.from_json(summary).text()
    assert "--random-init-norms" in "\n".join(lines)
    page = build_report(out).read_text()
    assert "The random-init model cannot serve as a control" in page
    assert "Degenerate heads left out" in page
    table, varied, _, _ = qwen3_run("norms", random_init_norms=True)
    control = varied["controls"]["random_init"]
    assert control["usable"] is True and control["constant_qnorm_heads"] == 0
    assert pd.to_numeric(table["random_init_r"]).notna().all()


SHORT_CTX = 64  # the short windows of the issue's third case (the test sweeps' context)


def _reference_entropy(tokens: torch.Tensor) -> np.ndarray:
    """H [window, layer, head, pos] of SmolLM2 from plain transformers (eager, fp32)."""
    from transformers import AutoModelForCausalLM

    from spectra_interp import models

    folder = models.gguf_as_hf_folder(models.smollm2_gguf_path())
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        attentions = model(tokens, output_attentions=True).attentions
    p = torch.stack(attentions, dim=1).double()  # [window, layer, head, q, k]
    return (-(p * torch.log(p.clamp_min(1e-300))).sum(-1)).float().numpy()


def test_smollm2_on_short_windows_has_one_constant_entropy_head(smollm2, smollm2_tokenizer):
    """SmolLM2's L18 H8 on 64-token windows puts (almost) all attention on one key, so H is 0 up
    to rounding: flagged, as by the reference's H; every other head of the run is measured."""
    from spectra_interp.corpus import load_corpus
    from spectra_interp.extract import extract

    windows = load_corpus("bundled", smollm2_tokenizer, SHORT_CTX, max_windows=6, seed=0)
    tokens = torch.from_numpy(windows.tokens)
    result = extract(smollm2, tokens, method="fused")
    qnorm, entropy = result.qnorm.numpy()[..., 1:], result.entropy.numpy()[..., 1:]
    reasons = degenerate_reasons(qnorm, entropy, "float32")
    flagged = {(int(a), int(b)) for a, b in zip(*np.nonzero(reasons != ""), strict=True)}
    assert flagged == {(18, 8)} and reasons[18, 8] == CONSTANT_H
    reference = _reference_entropy(tokens)[..., 1:]
    assert degenerate_reasons(qnorm, reference, "float32")[18, 8] == CONSTANT_H
    np.testing.assert_allclose(entropy[:, 18, 8], reference[:, 18, 8], atol=1e-4)


def test_no_head_of_the_default_smollm2_run_is_degenerate(smollm2, smollm2_tokenizer):
    """The default run's settings (1536-token windows of the bundled books, seed 0, its token
    sample), on its first three windows: every head measured, L18 H8 included (on these windows
    it attends to one key less exclusively than on 64-token ones)."""
    from spectra_interp.corpus import load_corpus
    from spectra_interp.extract import extract
    from spectra_interp.stats.sample import sample_positions

    defaults = SweepConfig()
    windows = load_corpus(
        defaults.corpus, smollm2_tokenizer, defaults.ctx, max_windows=defaults.max_windows,
        seed=defaults.seed,
    )  # fmt: skip
    tokens = torch.from_numpy(windows.tokens[:3])
    result = extract(smollm2, tokens, method="fused")
    picks = np.stack(
        [
            sample_positions(defaults.ctx, defaults.skip_first, defaults.sample_per_window, (0, w))
            for w in range(3)
        ]
    )
    take = torch.from_numpy(picks)[:, None, None, :].expand(-1, *result.qnorm.shape[1:3], -1)
    qnorm = torch.gather(result.qnorm, -1, take).numpy()
    entropy = torch.gather(result.entropy, -1, take).numpy()
    reasons = degenerate_reasons(qnorm, entropy, "float32")
    spread_q, spread_h = spreads(qnorm, entropy)
    print(f"smallest spreads: ‖q‖ {spread_q.min():.3g}, H {spread_h.min():.3g}")
    assert not (reasons != "").any()
    assert min(spread_q.min(), spread_h.min()) > spread_bound("float32")
