"""Typed records as JSON: a dataclass (nested dataclasses, lists, dicts, optionals, plain
values) to a JSON-ready dict in field order, and back, checked against its type hints."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from spectra_interp.errors import SpectraError

T = TypeVar("T")


def finite_or_none(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinity become None (JSON has neither)."""
    v = float(value)
    return v if math.isfinite(v) else None


def to_json(record: Any) -> Any:
    """A dataclass (or container of them) as plain JSON values, fields in declaration order."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, dict):
        return {str(k): to_json(v) for k, v in record.items()}
    if isinstance(record, list | tuple):
        return [to_json(v) for v in record]
    return record


def from_json(cls: type[T], data: Any, where: str = "") -> T:
    """The `cls` record `to_json` wrote; a field missing from `data` takes its default (a
    SpectraError naming the field when it has none)."""
    return _build(cls, data, where or cls.__name__)


def _build(hint: Any, data: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], data, where) if len(inner) == 1 else data
    if dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise SpectraError(f"{where} should be an object; got {type(data).__name__}.")
        hints = typing.get_type_hints(hint)
        values = {}
        for f in dataclasses.fields(hint):
            if f.name in data:
                values[f.name] = _build(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpectraError(f"{where} has no {f.name!r}.")
        return typing.cast(Any, hint)(**values)
    if origin is list and isinstance(data, list):
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)] if args else data
    if origin is dict and isinstance(data, dict):
        return {k: _build(args[1], v, f"{where}.{k}") for k, v in data.items()} if args else data
    return data
