"""The command line: options derived from the settings, TOML and presets, clear errors."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spectra_interp import cli, settings
from spectra_interp.config import SweepConfig
from spectra_interp.errors import SpectraError

SPECTRA = str(Path(sys.executable).with_name("spectra"))


def run(*argv, env=None, program=sys.executable):
    return subprocess.run(
        [program, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_help_lists_every_setting_of_the_config():
    done = run("scripts/sweep_heads.py", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: sweep_heads.py")
    for option in [*settings.flags(SweepConfig), "--config", "--preset"]:
        assert option in done.stdout, option
    assert "[1536]" in done.stdout and "phase1-llama-3-8b" in done.stdout


def test_spectra_help_lists_the_commands_and_each_command_its_own_name():
    top = run("--help", program=SPECTRA)
    assert top.returncode == 0 and top.stdout.startswith("usage: spectra")
    for name in cli.COMMANDS:
        assert name in top.stdout
    vis = run("visualize", "--help", program=SPECTRA)
    assert vis.stdout.startswith("usage: spectra visualize")
    assert "a results folder written by a sweep" in vis.stdout


def config_for(argv, preset=None):
    return cli.config_from_argv(SweepConfig, argv, "test", preset=preset)


def test_flags_override_the_toml_file_which_overrides_the_preset(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'model = "random:smollm2-135m"\nctx = 512\ncontrols = "randomization"\n'
        "[criteria]\nr_threshold = 0.4\n"
    )
    config = config_for(["--config", str(toml), "--ctx", "256", "--fdr", "0.05"])
    assert (config.model, config.ctx, config.controls) == (
        "random:smollm2-135m",
        256,
        ("randomization",),
    )
    assert (config.criteria.r_threshold, config.criteria.fdr) == (0.4, 0.05)
    assert config_for([]) == SweepConfig()
    preset = config_for(["--config", str(toml)], preset=cli.PHASE1_PRESET)
    assert (preset.model, preset.ctx, preset.dtype) == ("random:smollm2-135m", 512, "float16")


def test_experiment_preset_is_the_seed_protocol():
    config = config_for([], cli.PHASE1_PRESET)
    assert (config.model, config.ctx, config.batch_size, config.dtype, config.device) == (
        "llama-3-8b",
        4096,
        1,
        "float16",
        "cuda",
    )
    assert set(config.controls) == {"randomization", "random-init", "position"}


def test_the_pass_rule_is_recorded_but_not_part_of_the_identity():
    config = config_for(["--r-threshold", "0.3", "--no-report"])
    assert config.to_dict()["r_threshold"] == 0.3 and config.report is False
    assert "r_threshold" not in config.identity() and "report" not in config.identity()
    assert config.identity() == SweepConfig().identity()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ctx", "0"], "--ctx must be a positive integer"),
        (["--ctx", "ten"], "--ctx must be an integer"),
        (["--max-windows", "0"], "--max-windows must be a positive integer"),
        (["--controls", "randomization,shuffle"], "unknown value"),
        (["--skip-first", "0"], "--skip-first"),
        (["--r-threshold", "1.5"], "--r-threshold must be a number between 0 and 1"),
        (["--ctxx", "8"], "unrecognized arguments: --ctxx"),
        (["--max", "8"], "unrecognized arguments: --max"),
        (["--preset", "nope"], "Unknown preset 'nope'"),
    ],
)
def test_invalid_values_fail_before_work(argv, message):
    with pytest.raises(SpectraError, match=message):
        config_for(argv)


def test_bad_toml_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("ctx = \n")
    with pytest.raises(SpectraError, match="not valid TOML"):
        config_for(["--config", str(bad)])
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("windows = 3\n")
    with pytest.raises(SpectraError, match="unknown setting 'windows'"):
        config_for(["--config", str(unknown)])


def test_ctx_beyond_the_model_is_one_line():
    done = run("scripts/sweep_heads.py", "--ctx", "9000", "--out", "/tmp/spectra-never-written")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --ctx 9000 exceeds the 8192 positions of smollm2-135m."]


def test_unwritable_out_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run("scripts/sweep_heads.py", "--out", str(blocker / "results"))
    assert done.returncode == 2 and "Cannot write to the results folder" in done.stderr


def test_unreachable_hub_id_is_one_sentence_within_seconds(tmp_path):
    """Offline without HF_HUB_OFFLINE: no library traceback or retry lines, just the reason."""
    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    start = time.perf_counter()
    done = run("scripts/sweep_heads.py", "--model", "someorg/somemodel", env=env)
    assert time.perf_counter() - start < 60  # the process start and imports included
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: Could not load 'someorg/somemodel': the Hugging Face hub cannot be reached and "
        "the model is not in the local cache. Offline, use smollm2-135m, a local folder or a "
        ".gguf file."
    ]


def test_experiment_without_cuda_names_the_offline_command():
    done = run("scripts/run_experiment.py")
    assert done.returncode == 2
    assert "python scripts/sweep_heads.py" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_console_entry_point_dispatches(monkeypatch):
    seen = {}

    def fake(argv, prog):
        seen[prog] = list(argv)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "sweep", cli.Command(fake, "sweep"))
    assert cli.main(["sweep", "--ctx", "128"]) == 0 and seen["spectra sweep"] == ["--ctx", "128"]
    assert cli.main(["--ctx", "64"]) == 0 and seen["spectra sweep"] == ["--ctx", "64"]
