"""A run's identity and provenance: the head of every config.json (schema, the identity a
resume checks, the settings, the world size) and the environment (versions, device, commit)."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from spectra_interp.config import RunConfig
from spectra_interp.distributed import Dist

PACKAGES = ("spectra_interp", "torch", "transformer-lens", "transformers", "numpy")


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Versions and hardware for config.json."""

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype).removeprefix("torch."),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of the package's checkout (None outside a git checkout)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def run_record(
    schema_version: int,
    config: RunConfig,
    dist: Dist,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The head of every config.json (Phase 1 or Phase 2): the schema, the identity first (what
    a resume checks), the settings, the world size, and the environment once it is known."""
    record: dict[str, Any] = {
        "schema_version": schema_version,
        "identity": config.identity(),
        "config": config.to_dict(),
        "world_size": dist.world_size,
    }
    if device is not None and dtype is not None:
        record["environment"] = environment(device, dtype)
    return record
