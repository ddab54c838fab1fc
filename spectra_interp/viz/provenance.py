"""Where a results folder's numbers came from, as plain values for the pages: the run line
(model, corpus, context, ...), the command that reruns the sweep, the folder's files with their
SHA-256, the windows (windows/meta.csv) and Spectra's version and commit. All read from the
folder (config.json, windows/meta.csv); nothing here renders HTML.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from spectra_interp.config import SweepConfig
from spectra_interp.results import Results
from spectra_interp.settings import flat_values, specs
from spectra_interp.viz.figures import format_number


def flat_config(config: dict) -> dict:
    """config.json's settings in one flat dict, whether they sit at the top or in sections.

    Later sections win: the resolved `environment` (device, dtype actually used) over the
    requested `config`, and the number of windows actually run over `max_windows`.
    """
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for section in ("identity", "config", "environment"):
        if isinstance(config.get(section), dict):
            flat.update({k: v for k, v in config[section].items() if not isinstance(v, dict)})
    if "n_windows" in config:
        flat["windows"] = config["n_windows"]
    return flat


def labelled(flat: dict, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(label, value) for each (key, label) whose key the flat config holds as a scalar: the
    parts of a page's run line."""
    return [
        (label, format_number(flat[k]) if not isinstance(flat[k], str) else flat[k])
        for k, label in keys
        if k in flat and not isinstance(flat[k], dict | list)
    ]


def run_parts(config: dict, results: Results) -> list[tuple[str, str]]:
    """model · corpus · context · windows · device ... from config.json, whatever it has."""
    flat = flat_config(config)
    if "windows" not in flat and "max_windows" in flat:
        flat["windows"] = flat["max_windows"]
    keys = [
        ("model", "model"), ("corpus", "corpus"), ("ctx", "context"), ("windows", "windows"),
        ("device", "device"), ("dtype", "dtype"), ("method", "method"),
        ("skip_first", "skip first"), ("seed", "seed"),
    ]  # fmt: skip
    parts = labelled(flat, keys)
    if isinstance(flat.get("controls"), list):
        parts.append(("controls", ", ".join(map(str, flat["controls"]))))
    commit = flat.get("git_commit") or flat.get("commit")
    if isinstance(commit, str):
        parts.append(("commit", commit[:10]))
    parts.append(("folder", results.path.name))
    return parts


# Settings that say where and how a run is shown, not what it measures.
NOT_REPRODUCED = {"out", "overwrite", "report", "progress"}


def _flag_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_flag_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _same(value: object, default: object) -> bool:
    if isinstance(value, list) and isinstance(default, list) and len(value) == len(default):
        return all(_same(v, d) for v, d in zip(value, default, strict=True))
    if isinstance(value, float) and isinstance(default, float):
        return bool(np.isclose(value, default, rtol=1e-12, atol=0))
    return value == default


def reproduce_command(config: dict) -> str | None:
    """The command that reruns this sweep: every setting config.json records that differs from
    its default, as the flags of scripts/sweep_heads.py (None without recorded settings)."""
    settings = config.get("config")
    if not isinstance(settings, dict):
        return None
    defaults = flat_values(SweepConfig())
    words = ["python scripts/sweep_heads.py"]
    for spec in specs(SweepConfig):
        if spec.name in NOT_REPRODUCED or spec.name not in settings:
            continue
        value = settings[spec.name]
        if value is None or _same(value, defaults.get(spec.name)):
            continue
        if spec.is_bool:
            words.append(spec.flag if value else "--no-" + spec.flag.removeprefix("--"))
        else:
            words.append(f"{spec.flag} {shlex.quote(_flag_value(value))}")
    return " ".join(words)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(results: Results) -> dict:
    """Where the numbers came from: the windows (windows/meta.csv), the command, the files with
    their SHA-256, Spectra's version and commit."""
    layout = results.layout
    meta = read_meta(results)
    files = [
        (path, label)
        for path, label in (
            (layout.head_stats, "per-head statistics"),
            (layout.summary, "verdict and summaries"),
            (layout.config, "settings and environment"),
            (layout.tokens, "input: the windows' token ids"),
            (layout.meta, "input: each window's source, document and offset"),
        )
        if path.is_file()
    ]
    env = results.config.get("environment") if isinstance(results.config, dict) else None
    env = env if isinstance(env, dict) else {}
    packages = env.get("packages")
    packages = packages if isinstance(packages, dict) else {}
    return {
        "windows": [] if meta is None else meta.to_dict("records"),
        "window_columns": [] if meta is None else list(meta.columns),
        "command": reproduce_command(results.config),
        "world_size": results.config.get("world_size"),
        "files": [
            {
                "name": str(p.relative_to(layout.root)),
                "href": str(p.relative_to(layout.root)),
                "what": label,
                "sha256": _sha256(p),
                "bytes": f"{p.stat().st_size:,}",
            }
            for p, label in files
        ],
        "version": packages.get("spectra_interp"),
        "commit": env.get("git_commit"),
        "packages": packages,
    }


def read_meta(results: Results) -> pd.DataFrame | None:
    """windows/meta.csv, or None for a folder without it."""
    path = results.layout.meta
    return pd.read_csv(path) if path.is_file() else None
