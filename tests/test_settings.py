"""Settings declared once: a dataclass field becomes a flag, a TOML key, a preset entry and part
of the resume identity, with its own check and help, and nothing else to edit."""

import argparse
from dataclasses import dataclass

import pytest

from spectra_interp import settings
from spectra_interp.errors import SpectraError
from spectra_interp.settings import positive_int, setting


@dataclass(frozen=True)
class Inner:
    gamma: float = setting(0.5, "a grouped number", identity=False)


@dataclass(frozen=True)
class Demo:
    alpha: int = setting(3, "a positive count", check=positive_int)
    beta_name: str = setting("x", "a name")
    quiet: bool = setting(False, "no output", identity=False)
    inner: Inner = setting(default_factory=Inner)

    def __post_init__(self):
        settings.check_all(self)


def parse(argv):
    parser = settings.Parser(prog="demo", argument_default=argparse.SUPPRESS)
    settings.add_arguments(parser, Demo)
    return settings.given(parser.parse_args(argv), Demo)


def test_a_field_is_a_flag_with_its_help_and_default():
    parser = settings.Parser(prog="demo", argument_default=argparse.SUPPRESS)
    settings.add_arguments(parser, Demo)
    text = parser.format_help()
    assert "--alpha ALPHA" in text and "a positive count [3]" in text
    assert "--beta-name" in text and "--quiet, --no-quiet" in text and "--gamma" in text
    assert settings.flags(Demo) == [
        "--alpha", "--beta-name", "--quiet", "--no-quiet", "--gamma",
    ]  # fmt: skip


def test_flags_toml_and_defaults_resolve_in_order(tmp_path):
    toml = tmp_path / "demo.toml"
    toml.write_text('beta-name = "from-file"\nalpha = 7\n[inner]\ngamma = 0.25\n')
    got = settings.resolve(Demo, parse(["--alpha", "9", "--quiet"]), config_file=toml)
    assert got == Demo(alpha=9, beta_name="from-file", quiet=True, inner=Inner(0.25))
    assert settings.resolve(Demo, {}) == Demo()


def test_identity_keeps_only_settings_that_change_the_numbers():
    demo = Demo(alpha=4, quiet=True, inner=Inner(0.1))
    assert settings.identity(demo) == {"alpha": 4, "beta_name": "x"}
    assert settings.flat_values(demo) == {
        "alpha": 4, "beta_name": "x", "quiet": True, "gamma": 0.1,
    }  # fmt: skip
    assert list(settings.iter_flag_values(demo)) == [
        ("--alpha", "4"), ("--quiet", ""), ("--gamma", "0.1"),
    ]  # fmt: skip


def test_each_check_speaks_for_its_flag(tmp_path):
    with pytest.raises(SpectraError, match="--alpha must be a positive integer; got 0"):
        settings.resolve(Demo, parse(["--alpha", "0"]))
    with pytest.raises(SpectraError, match="--alpha must be an integer; got 'x'"):
        settings.resolve(Demo, parse(["--alpha", "x"]))
    with pytest.raises(SpectraError, match="demo: unrecognized arguments: --alph"):
        parse(["--alph", "3"])
    bad = tmp_path / "bad.toml"
    bad.write_text("delta = 1\n")
    with pytest.raises(SpectraError, match="unknown setting 'delta'"):
        settings.resolve(Demo, config_file=bad)


def test_packaged_presets_are_listed_and_read():
    from spectra_interp.config import SweepConfig

    assert "phase1-llama-3-8b" in settings.preset_names()
    values = settings.read_preset(SweepConfig, "phase1-llama-3-8b")
    assert values["model"] == "llama-3-8b" and values["ctx"] == 4096
