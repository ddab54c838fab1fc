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

import numpy as np
import pandas as pd
import pytest

from budget.helpers import run_argv, run_config
from spectra_interp import cli, settings
from spectra_interp.budget import arms, run_budget
from spectra_interp.budget.curves import CURVE_COLUMNS, PER_HEAD_COLUMNS
from spectra_interp.budget.data import split_documents
from spectra_interp.config import BudgetConfig
from spectra_interp.corpus import Document
from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import BudgetLayout

ROOT = Path(__file__).resolve().parents[2]


def test_results_folder_is_complete(finished):
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
    per_head = pd.read_csv(layout.per_head)
    assert list(per_head.columns) == list(PER_HEAD_COLUMNS)
    assert len(per_head) == len(arms.ARMS) * 2 * 2 * 4
    qnorm = per_head[per_head["arm"] == "qnorm"]
    assert qnorm["slope_log_qnorm"].notna().all() and qnorm["fit_r2"].between(0, 1).all()
    summary = json.loads(layout.summary.read_text())
    assert summary["verdict"].startswith("qnorm ") and "oracle_top_p" in summary["verdict"]
    assert [c["budget"] for c in summary["comparisons"]] == [0.3, 0.5]
    moved = summary["qnorm_read_in_masked_pass"]
    assert moved["budget"] == 0.5 and moved["mean_abs_change_keys_frac"] >= 0
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
    assert str(BudgetConfig().out_dir) == "results/adaptive-smollm2-135m-ctx512"
    with pytest.raises(SpectraError, match="--budgets"):
        settings.build(BudgetConfig, {"budgets": "0.2,1.5"})
    with pytest.raises(SpectraError, match="--skip-first"):
        settings.build(BudgetConfig, {"skip_first": 511})


def test_matched_mass_fits_each_budget_at_the_mass_it_affords(tiny_dir, corpus_dir, tmp_path):
    out = tmp_path / "matched"
    config = run_config(tiny_dir, corpus_dir, out, fit_mass="matched", report=False)
    assert config.fit_mass is None
    run_budget(config, log=lambda _: None)
    layout = BudgetLayout(out)
    with np.load(layout.plan) as plan:
        masses = plan["rules_fit_mass"]
        assert (np.diff(masses) > 0).all() and set(masses) <= set(arms.ORACLE_GRID)
    shards = [
        np.load(p)["fit_sums"] for p in sorted(layout.shard_dir(layout.CALIBRATION).iterdir())
    ]
    share = sum(s[..., 0].sum((0, 1)) for s in shards) / (len(shards) * 2 * 4 * (64 - 4))
    for mass, budget in zip(masses, (0.3, 0.5), strict=True):
        got = share[arms.ORACLE_GRID.index(mass)]
        assert abs(got - budget) == pytest.approx(np.abs(share - budget).min())
        assert abs(got - budget) < 0.05
    summary = json.loads(layout.summary.read_text())
    assert summary["fit_mass"] == {"0.3": masses[0], "0.5": masses[1]}


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
