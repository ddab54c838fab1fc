"""Settings as dataclass fields: each field states its default, help and check once; the
argparse parser, the TOML reader, presets and the resume identity are derived from them.

A field made with `setting(...)` carries its metadata; a field whose type is itself a settings
dataclass (e.g. the pass criteria) is a group whose fields are flattened into the same flags
(`--r-threshold`) and read from a TOML table of its name (`[criteria]`) or as top-level keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from spectra_interp.errors import SpectraError

PRESETS_PACKAGE = "spectra_interp.presets"


# --- declaring settings --------------------------------------------------------------------


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    check: Callable[[str, Any], None] | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    identity: bool = True,
    flag: str | None = None,
    shown_default: str | None = None,
) -> Any:
    """A dataclass field with its help text and check.

    `check(flag, value)` raises SpectraError with one sentence; `parse` turns a flag's text
    (and a TOML string) into the value; `identity` marks settings that change the numbers a
    results folder holds (a folder made with other values cannot be resumed); `flag` renames
    the command-line option; `shown_default` replaces the default shown in --help.
    """
    meta = {
        "help": help,
        "check": check,
        "parse": parse,
        "choices": tuple(choices) if choices else None,
        "identity": identity,
        "flag": flag,
        "shown_default": shown_default,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- checks (each names the flag and says what it wants) -------------------------------------


def positive_int(flag: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpectraError(f"{flag} must be a positive integer; got {value!r}.")


def optional_positive_int(flag: str, value: Any) -> None:
    if value is not None:
        positive_int(flag, value)


def non_negative_int(flag: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpectraError(f"{flag} must be a non-negative integer; got {value!r}.")


def open_fraction(flag: str, value: Any) -> None:
    """A number strictly between 0 and 1."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
        raise SpectraError(f"{flag} must be a number between 0 and 1 (exclusive); got {value!r}.")


def closed_fraction(flag: str, value: Any) -> None:
    """A number in [0, 1]."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise SpectraError(f"{flag} must be a number between 0 and 1; got {value!r}.")


def one_of(choices: Sequence[str]) -> Callable[[str, Any], None]:
    def check(flag: str, value: Any) -> None:
        if value not in choices:
            raise SpectraError(f"{flag} must be one of {', '.join(choices)}; got {value!r}.")

    return check


def subset_of(choices: Sequence[str]) -> Callable[[str, Any], None]:
    def check(flag: str, value: Any) -> None:
        unknown = [v for v in value if v not in choices]
        if unknown:
            raise SpectraError(
                f"{flag}: unknown value(s) {', '.join(map(str, unknown))}; choose from "
                f"{', '.join(choices)}."
            )

    return check


def positive_floats(flag: str, value: Any) -> None:
    if not value or any(not isinstance(v, int | float) or v <= 0 for v in value):
        raise SpectraError(f"{flag} must be a comma-separated list of positive numbers.")


# --- parsing text into values ---------------------------------------------------------------


def comma_list(text: str | Sequence[str], everything: Sequence[str] = ()) -> tuple[str, ...]:
    """`a,b` (or a TOML list) -> ('a', 'b'); `all` -> everything; `none` or '' -> ()."""
    if not isinstance(text, str):
        return tuple(str(v) for v in text)
    text = text.strip()
    if text == "all" and everything:
        return tuple(everything)
    if text in ("", "none"):
        return ()
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def float_list(text: str | Sequence[float]) -> tuple[float, ...]:
    """`0.2,0.35` (or a TOML list) -> (0.2, 0.35); `1/sqrt(2)`-style values are not parsed."""
    if not isinstance(text, str):
        return tuple(float(v) for v in text)
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise SpectraError(f"{text!r} is not a comma-separated list of numbers.") from err


def optional_int(text: str | int | None) -> int | None:
    if text is None or isinstance(text, int):
        return text
    if text.strip().lower() in ("", "none", "all"):
        return None
    try:
        return int(text)
    except ValueError as err:
        raise SpectraError(f"{text!r} is not an integer (or 'none').") from err


# --- walking a settings class ---------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One leaf setting: where it lives (`path`), its flag, type and metadata."""

    path: tuple[str, ...]
    name: str
    type: Any
    default: Any
    meta: Mapping[str, Any]

    @property
    def flag(self) -> str:
        return "--" + (self.meta.get("flag") or self.name.replace("_", "-"))

    @property
    def is_bool(self) -> bool:
        return self.type is bool


def is_settings(cls: Any) -> bool:
    return dataclasses.is_dataclass(cls) and isinstance(cls, type)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


@cache
def specs(cls: type) -> tuple[Spec, ...]:
    """Every leaf setting of `cls`, groups flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    out: list[Spec] = []
    for f in fields(cls):
        kind = hints[f.name]
        if is_settings(kind):
            out.extend(
                Spec((f.name, *s.path), s.name, s.type, s.default, s.meta) for s in specs(kind)
            )
        else:
            out.append(Spec((f.name,), f.name, kind, _default_of(f), f.metadata))
    names = [s.name for s in out]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise TypeError(f"{cls.__name__}: settings {sorted(duplicated)} appear twice.")
    return tuple(out)


def groups(cls: type) -> dict[str, type]:
    """The nested settings groups of `cls` by field name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if is_settings(hints[f.name])}


def check_all(obj: Any) -> None:
    """Run every field's check on an instance (groups check themselves when built)."""
    for s in specs(type(obj)):
        if len(s.path) == 1 and s.meta.get("check"):
            s.meta["check"](s.flag, getattr(obj, s.name))


def _parse(spec: Spec, value: Any) -> Any:
    """A value from a flag's text or a TOML value, as the field's type wants it."""
    parse = spec.meta.get("parse")
    if parse is not None:
        return parse(value)
    if spec.is_bool and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise SpectraError(f"{spec.flag} must be true or false; got {value!r}.")
    if isinstance(value, str) and spec.type in (int, float):
        try:
            return spec.type(value)
        except ValueError as err:
            kind = "an integer" if spec.type is int else "a number"
            raise SpectraError(f"{spec.flag} must be {kind}; got {value!r}.") from err
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of `cls` from flat leaf values (names as in `specs`), defaults elsewhere."""
    by_name = {s.name: s for s in specs(cls)}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise SpectraError(f"Unknown setting(s): {', '.join(unknown)}.")
    return _build(cls, {k: _parse(by_name[k], v) for k, v in values.items()})


def _build(cls: type, flat: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    nested = groups(cls)
    for f in fields(cls):
        if f.name in nested:
            kwargs[f.name] = _build(nested[f.name], flat)
        elif f.name in flat:
            kwargs[f.name] = flat[f.name]
    return cls(**kwargs)


def flat_values(obj: Any) -> dict[str, Any]:
    """Every leaf setting's value, flattened, as JSON-ready values (tuples become lists)."""
    out = {}
    for s in specs(type(obj)):
        value: Any = obj
        for part in s.path:
            value = getattr(value, part)
        out[s.name] = list(value) if isinstance(value, tuple) else value
    return out


def identity(obj: Any) -> dict[str, Any]:
    """The settings that determine the numbers of a results folder."""
    keep = {s.name for s in specs(type(obj)) if s.meta.get("identity", True)}
    return {k: v for k, v in flat_values(obj).items() if k in keep}


# --- TOML and presets ------------------------------------------------------------------------


def _toml_loads(text: str, where: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SpectraError(f"{where} is not valid TOML: {err}") from err


def _flatten_toml(cls: type, raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TOML keys (dashes or underscores; group tables or top-level keys) -> leaf names."""
    names = {s.name for s in specs(cls)}
    tables = set(groups(cls))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = key.replace("-", "_")
        if key in tables and isinstance(value, Mapping):
            out.update(_flatten_toml(groups(cls)[key], value, where))
        elif key in names:
            out[key] = value
        else:
            raise SpectraError(f"{where}: unknown setting {key!r}.")
    return out


def read_toml(cls: type, path: str | Path) -> dict[str, Any]:
    """Leaf settings of `cls` from a TOML file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SpectraError(f"Config file not found: {path}")
    return _flatten_toml(cls, _toml_loads(path.read_text(), str(path)), str(path))


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files(PRESETS_PACKAGE).iterdir()
        if p.name.endswith(".toml")
    )


def read_preset(cls: type, name: str) -> dict[str, Any]:
    """Leaf settings of `cls` from a packaged preset (spectra_interp/presets/<name>.toml)."""
    entry = resources.files(PRESETS_PACKAGE) / f"{name}.toml"
    if not entry.is_file():
        raise SpectraError(f"Unknown preset {name!r}; presets: {', '.join(preset_names())}.")
    where = f"preset {name}"
    return _flatten_toml(cls, _toml_loads(entry.read_text(), where), where)


# --- the command line ----------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse that raises SpectraError (one sentence) instead of printing usage and exiting,
    and takes no abbreviated flags (a prefix of one flag could become another's later)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise SpectraError(f"{self.prog}: {message}.")


def _help(spec: Spec) -> str:
    shown = spec.meta.get("shown_default")
    if shown is None:
        value = spec.default
        if isinstance(value, tuple):
            value = ",".join(map(str, value)) or "none"
        shown = "on" if value is True else "off" if value is False else value
    text = spec.meta.get("help", "")
    return f"{text} [{shown}]" if text else f"[{shown}]"


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per leaf setting of `cls` (bools get --x / --no-x)."""
    for s in specs(cls):
        kwargs: dict[str, Any] = {"dest": s.name, "help": _help(s)}
        if s.is_bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif s.meta.get("choices"):
            kwargs["choices"] = s.meta["choices"]
        parser.add_argument(s.flag, **kwargs)


def flags(cls: type) -> list[str]:
    """Every option of the parser `add_arguments` builds (the --no- forms of bools included)."""
    out = []
    for s in specs(cls):
        out.append(s.flag)
        if s.is_bool:
            out.append("--no-" + s.flag.removeprefix("--"))
    return out


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The leaf settings a parsed command line actually set (SUPPRESS leaves the rest out)."""
    names = {s.name for s in specs(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def resolve(
    cls: type,
    flags_given: Mapping[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    preset: str | None = None,
) -> Any:
    """Defaults, then a preset, then a TOML file, then flags: the later wins."""
    values: dict[str, Any] = {}
    if preset:
        values.update(read_preset(cls, preset))
    if config_file:
        values.update(read_toml(cls, config_file))
    values.update(flags_given or {})
    return build(cls, values)


def iter_flag_values(obj: Any) -> Iterator[tuple[str, str]]:
    """(flag, text) pairs that reproduce `obj`'s non-default settings on a command line."""
    for s in specs(type(obj)):
        value = flat_values(obj)[s.name]
        default = list(s.default) if isinstance(s.default, tuple) else s.default
        if value == default:
            continue
        if s.is_bool:
            yield (s.flag if value else "--no-" + s.flag.removeprefix("--")), ""
        elif value is None:
            yield s.flag, "none"
        elif isinstance(value, list):
            yield s.flag, ",".join(map(str, value)) or "none"
        else:
            yield s.flag, str(value)


def markdown_table(cls: type) -> str:
    """The README's table of a command's settings: flag, default, meaning."""
    rows = []
    for s in specs(cls):
        shown = _help(s).rsplit(" [", 1)
        text, default = (shown[0], shown[1][:-1]) if len(shown) == 2 else ("", shown[0][1:-1])
        flag = f"`{s.flag}`" + (f" / `--no-{s.flag[2:]}`" if s.is_bool else "")
        rows.append(f"| {flag} | `{default}` | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(["| flag | default | meaning |", "|---|---|---|", *rows])


def columns_markdown(
    columns: dict[str, str], header: tuple[str, str] = ("column", "meaning")
) -> str:
    """A README table of names and their one-line meanings (a CSV's columns, a folder's files)."""
    rows = [f"| `{name}` | {text} |" for name, text in columns.items()]
    return "\n".join([f"| {header[0]} | {header[1]} |", "|---|---|", *rows])
