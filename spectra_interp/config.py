"""The configuration of one sweep: plain values, validated with clear errors before any work."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from spectra_interp.errors import SpectraError

CONTROLS = ("randomization", "random-init", "position")
METHODS = ("stream", "cache")
DTYPES = ("auto", "float32", "float16", "bfloat16")

# Settings that change the numbers: a results folder made with other values cannot be resumed.
IDENTITY = (
    "model",
    "corpus",
    "ctx",
    "stride",
    "max_windows",
    "pack",
    "batch_size",
    "dtype",
    "method",
    "layers_per_pass",
    "skip_first",
    "controls",
    "seed",
    "sample_per_window",
    "n_boot",
)


@dataclass(frozen=True)
class SweepConfig:
    """One Phase 1 run. The defaults are the offline default: SmolLM2-135M on the bundled books.

    `ctx=1536, max_windows=16`: the trained and random-init passes over 16 windows of 1536 tokens
    finish inside 10 minutes on a 2-core CPU (2048 took 11); the headline run uses 4096.
    `skip_first=1` leaves out only position 0, whose entropy is 0 by construction (one key);
    the position confound is handled by the partial correlation and the normalised entropy
    rather than by discarding more tokens.
    """

    model: str = "smollm2-135m"
    corpus: str = "bundled"
    ctx: int = 1536
    stride: int | None = None
    max_windows: int | None = 16
    pack: bool = False
    batch_size: int = 1
    device: str = "auto"
    device_map: str | None = None
    dtype: str = "auto"
    method: str = "stream"
    layers_per_pass: int = 4
    skip_first: int = 1
    controls: tuple[str, ...] = CONTROLS
    seed: int = 0
    sample_per_window: int = 256
    n_boot: int = 1000
    out: str | None = None
    overwrite: bool = False
    report: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out).expanduser()
        name = self.model.replace("/", "_").replace(":", "-")
        return Path("results") / f"{Path(name).name}-ctx{self.ctx}"

    def identity(self) -> dict[str, Any]:
        """The settings that determine the numbers, as JSON-ready values."""
        return {k: _jsonable(getattr(self, k)) for k in IDENTITY}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        out["out"] = str(self.out_dir)
        return out

    def replace(self, **changes: Any) -> SweepConfig:
        return dataclasses.replace(self, **changes)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpectraError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}.")


def validate(config: SweepConfig) -> None:
    """Raise one clear sentence for the first invalid setting."""
    _positive("ctx", config.ctx)
    _positive("max_windows", config.max_windows, allow_none=True)
    _positive("stride", config.stride, allow_none=True)
    _positive("batch_size", config.batch_size)
    _positive("layers_per_pass", config.layers_per_pass)
    _positive("sample_per_window", config.sample_per_window)
    _positive("n_boot", config.n_boot)
    if config.ctx < 8:
        raise SpectraError(f"--ctx must be at least 8 tokens; got {config.ctx}.")
    if not isinstance(config.skip_first, int) or not 1 <= config.skip_first < config.ctx - 2:
        raise SpectraError(
            f"--skip-first must be between 1 and ctx - 3 (position 0 always has H = 0); "
            f"got {config.skip_first}."
        )
    if config.device_map and config.device_map not in ("auto", "balanced", "sequential", "cpu"):
        raise SpectraError(
            f"--device-map must be auto, balanced, sequential or cpu; got {config.device_map!r}."
        )
    if config.device_map and "random-init" in config.controls:
        raise SpectraError(
            "The random-init control builds its model on one device; with --device-map use "
            "--controls randomization,position and run random:<model> separately where it fits."
        )
    if config.method not in METHODS:
        raise SpectraError(f"--method must be one of {METHODS}; got {config.method!r}.")
    if config.dtype not in DTYPES:
        raise SpectraError(f"--dtype must be one of {DTYPES}; got {config.dtype!r}.")
    unknown = [c for c in config.controls if c not in CONTROLS]
    if unknown:
        raise SpectraError(f"Unknown control(s) {unknown}; choose from {', '.join(CONTROLS)}.")


def parse_controls(text: str) -> tuple[str, ...]:
    """`all`, `none` or a comma-separated list of controls."""
    text = text.strip()
    if text == "all":
        return CONTROLS
    if text in ("", "none"):
        return ()
    return tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))


def read_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file (keys as in SweepConfig, dashes or underscores)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise SpectraError(f"Config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SpectraError(f"{path} is not valid TOML: {err}") from err
    known = {f.name for f in fields(SweepConfig)} - {"extra"}
    values = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SpectraError(f"{path}: unknown setting(s) {unknown}.")
    if isinstance(values.get("controls"), str):
        values["controls"] = parse_controls(values["controls"])
    elif "controls" in values:
        values["controls"] = tuple(values["controls"])
    return values
