"""A run's windows, written once: read back from the results folder on resume (so a resumed or
joining run uses the very same token ids), else built and written by the process that writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spectra_interp.corpus import Windows, added_bos_id
from spectra_interp.results import store

# Each set of windows by name, with where its token ids and its meta table are written.
WindowFiles = dict[str, tuple[Path, Path]]


def stored_or_built(
    files: WindowFiles,
    tokenizer: Any,
    build: Callable[[], dict[str, Windows]],
    write: bool,
) -> dict[str, Windows]:
    """Every set of `files` read back when all are in the folder; else `build()` them and, when
    `write`, write them there."""
    bos = added_bos_id(tokenizer) is not None
    stored = {name: store.read_windows(tokens, meta, bos) for name, (tokens, meta) in files.items()}
    if all(w is not None for w in stored.values()):
        return {name: w for name, w in stored.items() if w is not None}
    built = build()
    if write:
        for name, windows in built.items():
            store.write_windows(*files[name], windows)
    return built
