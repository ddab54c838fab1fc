"""The Phase 2 run end to end on a tiny model: the results folder, resume after SIGKILL, the
document split, the command line and the preset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from budget.helpers import run_argv, run_config
from spectra_interp import cli, settings
from spectra_interp.budget import arms, run_budget
from spectra_interp.budget.curves import ALLOCATION_COLUMNS, CURVE_COLUMNS, PER_HEAD_COLUMNS
from spectra_interp.budget.data import PINNED_STDLIB, phase2_documents, split_documents
from spectra_interp.budget.plan import read_plan
from spectra_interp.budget.verdict import Summary
from spectra_interp.config import BudgetConfig
from spectra_interp.corpus import Document
from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import BudgetLayout

ROOT = Path(__file__).resolve().parents[2]


def test_results_folder_is_complete(finished, corpus_dir):
    layout = BudgetLayout(finished)
    for name in layout.OUTPUTS:
        assert layout.path(name).is_file(), name
    curves = pd.read_csv(layout.curves)
    assert list(curves.columns) == list(CURVE_COLUMNS)
    assert len(curves) == 1 + len(arms.ARMS) * 2
    dense = curves[curves["arm"] == arms.DENSE]
    assert len(dense) == 1 and dense["budget"].item() == 1.0
    assert dense[["keys_frac", "kv_union_frac", "top1_agree"]].eq(1.0).all(axis=None)
    assert dense["kl_mean"].item() == 0 and dense["ppl_delta_pct"].item() == 0
    assert curves["n_documents"].eq(4).all() and curves["n_tokens"].eq(6 * 59).all()
    rows = curves[curves["arm"] != arms.DENSE]
    assert (rows["kl_mean"] > 0).all() and (rows["kl_ci_low"] <= rows["kl_mean"]).all()
    assert (rows["kl_mean"] <= rows["kl_ci_high"]).all() and (rows["kl_p99"] > 0).all()
    assert (rows["kv_union_frac"] >= rows["keys_frac"] - 1e-12).all()
    fitted = rows[rows["arm"].isin(arms.FITTED)]
    assert fitted["lambda_transfer_budget"].between(0, 1).all()
    assert rows[~rows["arm"].isin(arms.FITTED)]["lambda_transfer_budget"].isna().all()
    # keys read: the kept keys; the estimate also reads every visible key at 4 of 16 bits
    estimated = rows[rows["arm"] == arms.ESTIMATED]
    dense_read = dense["keys_read"].item()
    assert (estimated["keys_read"] >= dense_read / 4).all()
    per_head = pd.read_csv(layout.per_head)
    assert list(per_head.columns) == list(PER_HEAD_COLUMNS)
    assert len(per_head) == len(arms.ARMS) * 2 * 2 * 4
    allocation = pd.read_csv(layout.allocation)
    assert list(allocation.columns) == list(ALLOCATION_COLUMNS)
    assert set(allocation["arm"]) == set(arms.FITTED)
    assert allocation["fraction"].between(0, 1).all()
    assert (
        allocation.groupby(["arm", "budget"])["share_high"].apply(lambda s: (s > 0).sum()) <= 1
    ).all()
    summary = Summary.from_json(json.loads(layout.summary.read_text()))
    assert summary.verdict.startswith("‖q‖ against head and position")
    assert [v.budget for v in summary.budgets] == [0.3, 0.5]
    for v in summary.budgets:
        assert v.call in ("helps", "hurts", "no useful effect", "undecided")
        assert v.ratio.low <= v.ratio.point <= v.ratio.high
    assert summary.ci_level == pytest.approx(0.9) and summary.margin == 0.1
    assert {row["source"] for row in summary.by_source} == {str(corpus_dir)}
    for row, v in zip(summary.by_source, summary.budgets, strict=True):
        # one source: its verdict is the run's
        assert (row["ratio"], row["ratio_low"], row["ratio_high"]) == (
            v.ratio.point,
            v.ratio.low,
            v.ratio.high,
        )
        assert row["call"] == v.call and row["n_documents"] == summary.n_documents
    assert Summary.from_json(summary.to_json()) == summary
    plan = read_plan(layout)
    assert plan.budgets == (0.3, 0.5) and set(plan.fitted) == set(arms.FITTED)
    config = json.loads(layout.config.read_text())
    calibration, evaluation = (set(config["documents"][s]) for s in layout.SPLITS)
    assert len(calibration) == len(evaluation) == 4 and not calibration & evaluation
    assert config["n_windows"] == {"calibration": 4, "evaluation": 6}
    assert len(layout.done_windows(layout.MASKED)) == 6


def test_the_documents_split_reproducibly_and_never_overlap():
    docs = [Document(f"d{i}", "s", "text") for i in range(12)]
    cal, ev = split_documents(docs, 0.5, seed=3)
    assert len(cal) == len(ev) == 6 and not {d.doc_id for d in cal} & {d.doc_id for d in ev}
    assert (cal, ev) == split_documents(docs, 0.5, seed=3)
    assert cal != split_documents(docs, 0.5, seed=4)[0]
    assert len(split_documents(docs[:2], 0.9, seed=0)[1]) == 1
    mixed = docs + [Document(f"b{i}", "books", "text") for i in range(4)]
    for seed in range(6):  # each source on both sides, half each
        cal, ev = split_documents(mixed, 0.5, seed=seed)
        assert (
            sorted(d.source for d in cal)
            == sorted(d.source for d in ev)
            == ["books"] * 2 + ["s"] * 6
        )
    alone = [Document("a", "x", "t"), Document("b", "y", "t")]  # one document per source
    assert sorted(map(len, split_documents(alone, 0.5, seed=0))) == [1, 1]
    with pytest.raises(SpectraError, match="at least 2 documents"):
        split_documents(docs[:1], 0.5, seed=0)


def test_killed_run_resumes_to_identical_curves(finished, tiny_dir, corpus_dir, tmp_path):
    out = tmp_path / "killed"
    layout = BudgetLayout(out)
    argv = run_argv(tiny_dir, corpus_dir, out) + ["--no-report"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "adaptive_attention.py"), *argv],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())},
    )  # fmt: skip
    deadline = time.time() + 120
    while not layout.done_windows(layout.MASKED) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = layout.done_windows(layout.MASKED)
    assert 1 <= len(partial) < 6 and not layout.curves.exists()
    said: list[str] = []
    run_budget(run_config(tiny_dir, corpus_dir, out, report=False), log=said.append)
    assert f"Resuming {out}: {len(partial)} windows already done." in said
    pd.testing.assert_frame_equal(
        pd.read_csv(layout.curves), pd.read_csv(finished / "budget_curves.csv")
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(layout.per_head), pd.read_csv(finished / "per_head.csv")
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(layout.allocation), pd.read_csv(finished / "allocation.csv")
    )


def test_other_settings_in_the_folder_are_an_error(finished, tiny_dir, corpus_dir):
    with pytest.raises(SpectraError, match="sink: folder has 1, this run has 2"):
        run_budget(run_config(tiny_dir, corpus_dir, finished, sink=2), log=lambda _: None)


def test_visualize_rebuilds_the_phase2_report(finished, tmp_path, capsys):
    report = finished / "report.html"
    report.unlink()
    assert cli.main(["visualize", str(finished)]) == 0
    assert capsys.readouterr().out.strip() == f"Report: {report}"
    assert "Spectra Phase 2" in report.read_text(encoding="utf-8")


def test_help_lists_every_setting_and_the_preset_loads():
    text = cli.settings_parser(BudgetConfig, "adaptive_attention.py", cli.BUDGET_HELP).format_help()
    for flag in settings.flags(BudgetConfig):
        assert flag in text, flag
    assert "budget" in cli.COMMANDS and "phase2-llama-3-8b" in text
    config = settings.resolve(BudgetConfig, preset="phase2-llama-3-8b")
    assert (config.model, config.ctx, config.device) == ("llama-3-8b", 4096, "cuda")
    assert str(config.out_dir) == "results/adaptive-llama-3-8b-ctx4096"
    assert str(BudgetConfig().out_dir) == "results/adaptive-smollm2-135m-ctx256"
    full = settings.resolve(BudgetConfig, preset="phase2-full")
    assert full.budgets == (0.1, 0.2, 0.3, 0.4, 0.5) and full.max_windows >= 48
    assert full.model == BudgetConfig().model and full.corpus == BudgetConfig().corpus
    with pytest.raises(SpectraError, match="--budgets"):
        settings.build(BudgetConfig, {"budgets": "0.2,1.5"})
    with pytest.raises(SpectraError, match="--skip-first"):
        settings.build(BudgetConfig, {"skip_first": 255})


def test_the_stdlib_documents_are_the_pinned_modules():
    docs = phase2_documents("bundled,stdlib-code")
    stdlib = [d.doc_id for d in docs if d.source == "stdlib-code"]
    assert stdlib == list(PINNED_STDLIB)  # every pinned module is there, in pinned order
    assert len(docs) - len(stdlib) == 12 and len(set(PINNED_STDLIB)) == len(PINNED_STDLIB)


def test_two_torchrun_ranks_give_the_curves_of_one_process(
    finished, tiny_dir, corpus_dir, tmp_path
):
    """Ranks share the windows of every stage; rank 0 plans and merges. (Flags are checked
    against torchrun's own parser too, which reads the script's options.)"""
    out = tmp_path / "two"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port", str(29600 + os.getpid() % 1000),
         str(ROOT / "scripts" / "adaptive_attention.py"),
         *run_argv(tiny_dir, corpus_dir, out), "--no-report"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("masked: 3 windows computed here.") == 2
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "budget_curves.csv"),
        pd.read_csv(finished / "budget_curves.csv"),
        check_exact=False,
        rtol=1e-5,
    )


def test_one_feature_cell_makes_qnorm_head_position_exactly(tiny_dir, corpus_dir, tmp_path):
    out = tmp_path / "one-cell"
    run_budget(
        run_config(tiny_dir, corpus_dir, out, feature_cells=1, report=False), log=lambda _: None
    )
    curves = pd.read_csv(out / "budget_curves.csv").set_index(["arm", "budget"])
    columns = ["keys_frac", "kl_mean", "kl_p99", "ppl", "top1_agree", "lambda_transfer_budget"]
    for budget in (0.3, 0.5):
        qnorm = curves.loc[(arms.PROPOSAL, budget), columns]
        rival = curves.loc[(arms.RIVAL, budget), columns]
        assert (qnorm == rival).all(), (qnorm, rival)
    summary = json.loads((out / "summary.json").read_text())
    for v in summary["budgets"]:
        assert v["ratio"]["point"] == 1.0 and v["call"] == "no useful effect"
