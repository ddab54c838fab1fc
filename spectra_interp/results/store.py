"""Writing a results folder: atomic files (`atomic`), shards, per-block claims, and folder
preparation.

Two runs may share a folder: each claims a block of windows before computing it (a file created
with O_EXCL naming host, pid and start time) and skips blocks another live run holds. A claim
whose process is gone (same host) or that is older than `SPECTRA_CLAIM_STALE_H` hours (another
host) is stale and taken over, so a killed run never blocks a resume. The narrow race of two runs
taking over one stale claim at once costs repeated work, never a wrong result: shards of one
window are identical and written atomically.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spectra_interp.atomic import write_bytes_atomic
from spectra_interp.corpus import Windows
from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import Layout

CLAIM_STALE_S = float(os.environ.get("SPECTRA_CLAIM_STALE_H", "12")) * 3600


def write_with(path: Path, writer: Callable[[io.BytesIO], Any]) -> None:
    buffer = io.BytesIO()
    writer(buffer)
    write_bytes_atomic(path, buffer.getvalue())


def write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    named: dict[str, Any] = arrays  # names, never savez's own keywords
    write_with(path, lambda buf: np.savez(buf, **named))


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    write_with(path, lambda buf: frame.to_parquet(buf, index=False))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# --- shards ------------------------------------------------------------------------------


# Shard arrays that are a window's measurement: all zeros means nothing was measured.
MEASURED = ("sample_qnorm", "sample_entropy")


def check_result(stage: str, window_id: int, arrays: dict[str, np.ndarray]) -> None:
    """Refuse (SpectraError) a shard with a NaN or infinite number, or a measured array
    (`MEASURED`) that is all zeros: such a result comes from a broken mask or kernel, and a
    resume would trust it."""
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise SpectraError(
                f"The {stage} result of window {window_id} has {int((~np.isfinite(a)).sum())} "
                f"NaN or infinite values in `{name}`, so it was not written."
            )
        if name in MEASURED and a.size and not a.any():
            raise SpectraError(
                f"The {stage} result of window {window_id} is all zeros in `{name}` (every "
                "layer, head and position), so it was not written."
            )


def write_shard(layout: Layout, stage: str, window_id: int, **arrays: np.ndarray) -> None:
    """One window's shard of `stage` (a model of the sweep, a stage of Phase 2), atomically,
    after `check_result`."""
    check_result(stage, window_id, arrays)
    write_npz(layout.shard(stage, window_id), **arrays)


def read_shard(layout: Layout, stage: str, window_id: int) -> dict[str, np.ndarray]:
    with np.load(layout.shard(stage, window_id)) as data:
        return {k: data[k] for k in data.files}


# --- claims ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_owner(path: Path) -> dict[str, Any] | None:
    """Who holds a claim (host, pid, started), or None when there is none or it is stale."""
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        owner = {}
    if owner.get("host") == socket.gethostname():
        live = isinstance(owner.get("pid"), int) and _alive(owner["pid"])
    else:
        live = time.time() - float(owner.get("started", 0)) < CLAIM_STALE_S
    return owner if live else None


def try_claim(path: Path) -> bool:
    """Claim a block for this process; False when another live run holds it.

    The claim is written whole under a temporary name and hard-linked into place, which fails
    when the name exists: no other run ever reads a claim half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        for _ in range(2):
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                owner = claim_owner(path)
                if owner is not None:
                    return owner.get("pid") == me["pid"] and owner.get("host") == me["host"]
                path.unlink(missing_ok=True)
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def release_claim(path: Path) -> None:
    path.unlink(missing_ok=True)


def live_claims(layout: Layout) -> list[dict[str, Any]]:
    """Claims held by live runs other than this process (used to refuse --overwrite)."""
    folder = layout.root / layout.CLAIMS
    owners = [claim_owner(p) for p in folder.rglob("*.json")] if folder.is_dir() else []
    return [o for o in owners if o is not None and o.get("pid") != os.getpid()]


# --- windows ----------------------------------------------------------------------------------


def write_windows(tokens: Path, meta: Path, windows: Windows) -> None:
    """A run's windows, written once so that a resumed run reads the very same ones back."""
    write_with(tokens, lambda buf: np.save(buf, windows.tokens))
    write_csv(meta, windows.meta)


def read_windows(tokens: Path, meta: Path, bos: bool) -> Windows | None:
    """The windows `write_windows` wrote, or None when the folder has none yet."""
    if not (tokens.exists() and meta.exists()):
        return None
    return Windows(tokens=np.load(tokens), meta=pd.read_csv(meta), bos=bos)


# --- preparing a folder ----------------------------------------------------------------------


def check_writable(out: Path, min_free_bytes: int) -> None:
    """Fail before any long work when `out` cannot be created, written or has too little room."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A probe of this process's own: runs that join one folder must not remove each other's.
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-") as probe:
            probe.write(b"ok")
    except OSError as err:
        raise SpectraError(f"Cannot write to the results folder {out}: {err.strerror}.") from err
    stat = os.statvfs(out)
    free = stat.f_bavail * stat.f_frsize
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


def prepare_folder(layout: Layout, identity: dict[str, Any], overwrite: bool) -> bool:
    """Make the folder ready for a run; True when it resumes (or joins) a run of the same
    identity. A folder of another identity is an error naming the differing settings, unless
    `overwrite` clears it first (refused while another run is using it)."""
    out = layout.root
    if overwrite and out.exists():
        busy = live_claims(layout)
        if busy:
            who = busy[0]
            raise SpectraError(
                f"{out} is in use by another run (pid {who.get('pid')} on {who.get('host')}); "
                "it cannot be overwritten until that run ends."
            )
        _clear(layout)
        return False
    if not layout.config.exists():
        if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise SpectraError(
                f"{out} exists and is not a Spectra results folder; choose another --out "
                "or pass --overwrite."
            )
        return False
    existing = read_json(layout.config).get("identity", {})
    differing = config_mismatch(existing, identity)
    if differing:
        raise SpectraError(
            f"{out} holds a run with other settings ({'; '.join(differing)}); use another --out "
            "or --overwrite."
        )
    return True


def _clear(layout: Layout) -> None:
    """Remove what a Spectra run writes (and nothing else a user may keep there)."""
    for name in layout.FOLDERS:
        shutil.rmtree(layout.path(name), ignore_errors=True)
    for name in layout.OUTPUTS:
        layout.path(name).unlink(missing_ok=True)
