"""The results folder: atomic writes, per-window shards (the unit of resume), and its schema.

Layout (version 1):
    config.json                         resolved configuration, versions, device, git commit
    windows/tokens.npy, windows/meta.csv  the windows' token ids and metadata
    shards/<model>/window_XXXXX.npz     per-window sufficient statistics + token sample
    head_stats.csv, summary.json        per-head table and the verdict
    token_sample.parquet, attention_sample.npz, report.html

Every file is written to a temporary name in the same folder and renamed into place, so a
killed run never leaves a truncated file that a resume would trust.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spectra_interp.errors import SpectraError

SCHEMA_VERSION = 1
RESULT_FILES = (
    "config.json",
    "head_stats.csv",
    "summary.json",
    "token_sample.parquet",
    "attention_sample.npz",
    "report.html",
)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise SpectraError(f"The disk is full: could not write {path}.") from err
        raise SpectraError(f"Could not write {path}: {err.strerror or err}.") from err


def write_with(path: Path, writer: Callable[[io.BytesIO], Any]) -> None:
    buffer = io.BytesIO()
    writer(buffer)
    write_bytes_atomic(path, buffer.getvalue())


def write_json(path: Path, value: Any) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=2, allow_nan=False) + "\n").encode())


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_bytes_atomic(path, frame.to_csv(index=False).encode())


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    write_with(path, lambda buf: np.savez(buf, **arrays))


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    write_with(path, lambda buf: frame.to_parquet(buf, index=False))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def shard_path(out: Path, model: str, window_id: int) -> Path:
    return out / "shards" / model / f"window_{window_id:05d}.npz"


def write_shard(out: Path, model: str, window_id: int, **arrays: np.ndarray) -> None:
    write_npz(shard_path(out, model, window_id), **arrays)


def read_shard(out: Path, model: str, window_id: int) -> dict[str, np.ndarray]:
    with np.load(shard_path(out, model, window_id)) as data:
        return {k: data[k] for k in data.files}


def done_windows(out: Path, model: str) -> set[int]:
    """Window ids whose shard is complete (a shard is only ever renamed into place whole)."""
    folder = out / "shards" / model
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("_")[1]) for p in folder.glob("window_*.npz")}


def check_writable(out: Path, min_free_bytes: int) -> None:
    """Fail before any long work when `out` cannot be created, written or has too little room."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise SpectraError(f"Cannot write to the results folder {out}: {err.strerror}.") from err
    free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
    if free < min_free_bytes:
        raise SpectraError(
            f"Only {free / 2**20:.0f} MiB free under {out}; this run needs about "
            f"{min_free_bytes / 2**20:.0f} MiB."
        )


def config_mismatch(existing: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Names (with both values) of identity settings that differ between two runs."""
    return [
        f"{key}: folder has {existing.get(key)!r}, this run has {wanted[key]!r}"
        for key in wanted
        if existing.get(key) != wanted[key]
    ]


def prepare_folder(out: Path, identity: dict[str, Any], overwrite: bool) -> bool:
    """Make `out` ready for a run; True when it resumes an earlier run of the same configuration.

    A folder from a different configuration is never mixed in: that is an error naming the
    differing settings, unless `overwrite` clears it first.
    """
    config_file = out / "config.json"
    if overwrite and out.exists():
        _clear(out)
        return False
    if not config_file.exists():
        if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise SpectraError(
                f"{out} exists and is not a Spectra results folder; choose another --out "
                "or pass --overwrite."
            )
        return False
    existing = read_json(config_file).get("identity", {})
    differing = config_mismatch(existing, identity)
    if differing:
        raise SpectraError(
            f"{out} holds a run with other settings ({'; '.join(differing)}); use another --out "
            "or --overwrite."
        )
    return True


def _clear(out: Path) -> None:
    """Remove what a Spectra run writes in `out` (and nothing else a user may keep there)."""
    import shutil

    for name in ("shards", "windows"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
