"""End to end on SmolLM2 with a short context: the results folder, resume after SIGKILL."""

import json
import re
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
from sweep_helpers import ROOT, run_sweep_cli, sweep_cmd

from spectra_interp.config import SweepConfig
from spectra_interp.results import store
from spectra_interp.results.layout import SweepLayout
from spectra_interp.stats.columns import HEAD_COLUMNS
from spectra_interp.sweep import control_source, strongest_heads


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    done = run_sweep_cli(out, "--no-progress")
    assert done.returncode == 0, done.stderr
    return out, done


def test_results_folder_is_complete(finished):
    out, done = finished
    layout = SweepLayout(out)
    for name in (*layout.OUTPUTS, layout.TOKENS, layout.META):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "head_stats.csv")
    assert len(table) == 270 and list(table.columns) == list(HEAD_COLUMNS)
    extras = ["r_max_attn", "r_log_keff", "auroc_low_entropy", "delta_r2", "temperature_share"]
    flagged = table["degenerate"].fillna("") != ""
    # SmolLM2's L18 H8 attends to one key on 64-token windows: H is 0 up to rounding (issue 23)
    assert set(zip(table["layer"][flagged], table["head"][flagged], strict=True)) <= {(18, 8)}
    assert table.loc[flagged, extras].isna().all().all()
    assert table.loc[~flagged, extras].notna().all().all()
    assert (table["cluster_unit"] == "window").all()
    alpha = pd.read_csv(out / layout.ALPHA_RESPONSE)
    assert list(alpha.columns) == ["layer", "head", "scale", "mean_entropy"]
    assert len(alpha) == 270 * 5
    assert table["n_windows"].eq(6).all() and table["random_init_r"].notna().all()
    assert np.load(out / "windows" / "tokens.npy").shape == (6, 64)
    assert len(layout.done_windows("trained")) == len(layout.done_windows("random_init")) == 6
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["ctx"] == 64 and config["environment"]["packages"]["torch"]
    assert config["q_source"]["method"] == "fused"
    assert config["q_source"]["source"] == "the query argument of the model's attention function"
    assert set(config["q_source"]["kernels"].values()) == {"flash_cpu"}
    assert config["attention"]["windows"] == [None] * 30
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heads_total"] == 270 and summary["run"]["n_windows"] == 6
    assert summary["beyond_r"]["finding"] and "Beyond r:" in done.stdout
    sample = pd.read_parquet(out / "token_sample.parquet")
    assert set(sample["model"]) == {"trained", "random_init"}
    attention = np.load(out / "attention_sample.npz")
    assert attention["pattern"].shape == (3, 30, 9, 48, 48)  # 3 slices of 48 tokens
    assert "Verdict" in done.stdout and "Report:" in done.stdout and "pearson_r" in done.stdout


def test_killed_run_resumes_to_the_same_table(finished, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        sweep_cmd(out, "--no-progress"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    layout = SweepLayout(out)
    while len(layout.done_windows("trained")) < 2 and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = layout.done_windows("trained")
    assert 2 <= len(partial) < 6 and not (out / "head_stats.csv").exists()
    resumed = run_sweep_cli(out, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(partial)} windows already done" in resumed.stdout
    expected = pd.read_csv(finished[0] / "head_stats.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "head_stats.csv"), expected)


def test_two_runs_on_one_folder_share_the_windows(finished, tmp_path):
    """Two runs started together on one folder: each window is computed once, by one of them,
    and both end with the table of an uninterrupted run."""
    out = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            sweep_cmd(out, "--no-progress", "--no-report"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    for label in ("trained", "random_init"):
        counts = [
            int(re.search(rf"{label}: (\d+) windows computed here", stdout).group(1))
            if f"{label}:" in stdout
            else 0
            for stdout, _ in outputs
        ]
        assert sum(counts) == 6, (label, counts)
    expected = pd.read_csv(finished[0] / "head_stats.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "head_stats.csv"), expected)


def test_other_settings_in_the_folder_are_an_error(finished):
    done = run_sweep_cli(finished[0], "--seed", "7")
    assert done.returncode == 2
    assert "seed: folder has 0, this run has 7" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_overwrite_replaces_a_folder_of_other_settings(tmp_path):
    layout = SweepLayout(tmp_path / "run")
    store.write_json(layout.config, {"identity": {"seed": 99}})
    store.write_shard(layout, "trained", 0, stats=np.zeros(1))
    config = SweepConfig(out=str(layout.root), overwrite=True)
    assert store.prepare_folder(layout, config.identity(), overwrite=True) is False
    assert not (layout.root / "shards").exists() and not layout.config.exists()


def test_random_init_control_source():
    assert control_source(SweepConfig()) == ("random:smollm2-135m", 0)
    assert control_source(SweepConfig(model="random:smollm2-135m", seed=3)) == (
        "random:smollm2-135m",
        4,
    )


def test_strongest_heads_orders_by_absolute_r():
    table = pd.DataFrame(
        {
            "layer": [0, 0, 1],
            "head": [0, 1, 0],
            "pearson_r": [0.1, -0.9, 0.5],
            "ci_low": 0,
            "ci_high": 0,
            "partial_r_position": 0,
            "q_fdr": 0,
            "passes": False,
        }
    )
    assert strongest_heads(table, n=2)["pearson_r"].tolist() == [-0.9, 0.5]


def test_a_sliding_window_model_counts_the_keys_each_layer_sees(tmp_path, smollm2_tokenizer):
    """Gemma-2 layout (sliding, global, sliding) with SmolLM2's tokenizer: the token sample's
    n_keys, the normalised entropy and config.json follow each layer's window."""
    from arch_matrix import MATRIX, WINDOW, save_tiny_model

    cls, kwargs = MATRIX["gemma2"]
    MATRIX["gemma2-vocab"] = (cls, {**kwargs, "vocab_size": 49152})
    try:
        folder = save_tiny_model("gemma2-vocab", tmp_path / "model")
    finally:
        del MATRIX["gemma2-vocab"]
    smollm2_tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    done = run_sweep_cli(out, "--model", str(folder), "--controls", "randomization,position")
    assert done.returncode == 0, done.stderr
    sample = pd.read_parquet(out / "token_sample.parquet")
    top = sample.groupby("layer")["n_keys"].max().to_dict()
    assert top == {0: WINDOW, 1: 64, 2: WINDOW}
    assert (sample["entropy"] <= np.log(sample["n_keys"]) + 1e-5).all()
    config = json.loads((out / "config.json").read_text())
    assert config["attention"]["windows"] == [WINDOW, None, WINDOW]
    assert config["attention"]["softcap"] == 5.0
