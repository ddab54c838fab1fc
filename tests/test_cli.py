"""The command line: --help lists every option, TOML config with flag overrides, clear errors."""

import subprocess
import sys

import pytest

from spectra_interp import cli
from spectra_interp.config import SweepConfig
from spectra_interp.errors import SpectraError

OPTIONS = (
    "--model --corpus --ctx --max-windows --batch-size --device --dtype --method "
    "--layers-per-pass --skip-first --controls --seed --out --overwrite --config"
).split()


def test_help_lists_every_option():
    done = subprocess.run(
        [sys.executable, "scripts/sweep_heads.py", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for option in OPTIONS:
        assert option in done.stdout, option


def config_for(argv, preset=None):
    return cli.config_from_args(cli.sweep_parser().parse_args(argv), preset)


def test_flags_override_the_toml_file(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "random:smollm2-135m"\nctx = 512\ncontrols = "randomization"\n')
    config = config_for(["--config", str(toml), "--ctx", "256"])
    assert (config.model, config.ctx, config.controls) == (
        "random:smollm2-135m",
        256,
        ("randomization",),
    )
    assert config_for([]) == SweepConfig()


def test_experiment_preset_is_the_seed_protocol():
    config = config_for([], cli.EXPERIMENT_PRESET)
    assert (config.model, config.ctx, config.batch_size, config.dtype, config.device) == (
        "llama-3-8b",
        4096,
        1,
        "float16",
        "cuda",
    )
    assert set(config.controls) == {"randomization", "random-init", "position"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ctx", "0"], "--ctx must be a positive integer"),
        (["--max-windows", "0"], "--max-windows must be a positive integer"),
        (["--controls", "randomization,shuffle"], "Unknown control"),
        (["--skip-first", "0"], "--skip-first"),
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
    with pytest.raises(SpectraError, match="unknown setting"):
        config_for(["--config", str(unknown)])


def run_cli(*argv):
    return subprocess.run(
        [sys.executable, "scripts/sweep_heads.py", *argv], capture_output=True, text=True
    )


def test_ctx_beyond_the_model_is_one_line():
    done = run_cli("--ctx", "9000", "--out", "/tmp/spectra-never-written")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --ctx 9000 exceeds the 8192 positions of smollm2-135m."]


def test_unwritable_out_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_cli("--out", str(blocker / "results"))
    assert done.returncode == 2 and "Cannot write to the results folder" in done.stderr


def test_experiment_without_cuda_names_the_offline_command():
    done = subprocess.run(
        [sys.executable, "scripts/run_experiment.py"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "python scripts/sweep_heads.py" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_console_entry_point_dispatches(monkeypatch):
    seen = {}
    monkeypatch.setattr(
        cli, "run_sweep_command", lambda argv, *a, **k: seen.setdefault("argv", argv) and 0
    )
    assert cli.main(["sweep", "--ctx", "128"]) == 0 and seen["argv"] == ["--ctx", "128"]
