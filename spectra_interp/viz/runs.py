"""Finished results folders read as typed runs, for pages that put several runs side by side.

`load_run(folder)` reads a finished sweep folder (config, summary, per-head table, windows and
the trained model's per-window sums) or a finished Phase 2 folder (config, summary, curves), and
refuses in one sentence naming the folder anything else: a missing folder, a folder Spectra did
not write, a run that has not finished, or a schema this version does not read. No model is
loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float

from spectra_interp.budget.verdict import BudgetVerdict, Summary
from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import (
    BUDGET_SCHEMA_VERSION,
    SCHEMA_VERSION,
    BudgetLayout,
    Layout,
    SweepLayout,
)
from spectra_interp.results.load import checked_shards, read_json_object
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.degenerate import is_degenerate
from spectra_interp.stats.verdict import RunFacts, Verdict

PHASE2 = 2


@dataclass(frozen=True)
class Architecture:
    """The attention facts two runs must share for their heads to be compared one by one."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    qk_norm: bool
    windows: tuple[int | None, ...]

    @classmethod
    def of(cls, attention: dict[str, Any]) -> Architecture:
        """From config.json's `attention` record (`AttentionSpec.describe()`)."""
        return cls(
            name=str(attention["architecture"]),
            n_layers=int(attention["n_layers"]),
            n_heads=int(attention["n_heads"]),
            n_kv_heads=int(attention["n_kv_heads"]),
            d_head=int(attention["d_head"]),
            qk_norm="QK-norm" in str(attention.get("q_reason", "")),
            windows=tuple(None if w is None else int(w) for w in attention["windows"]),
        )

    def windows_text(self) -> str:
        """Per-layer windows in runs: "full ×30", "8 ×1, full ×1, 8 ×1"."""
        runs: list[list] = []
        for w in self.windows:
            if runs and runs[-1][0] == w:
                runs[-1][1] += 1
            else:
                runs.append([w, 1])
        return ", ".join(f"{'full' if w is None else w} ×{n}" for w, n in runs)


@dataclass(frozen=True)
class SweepRun:
    """A finished sweep folder: its records, per-head table and the trained model's per-window
    sums `stats` ``[window, layer, head, moment]`` in the order of `meta`'s rows."""

    path: Path
    config: dict[str, Any]
    summary: Verdict
    head_stats: pd.DataFrame
    meta: pd.DataFrame
    stats: Float[np.ndarray, "window layer head moment"]
    architecture: Architecture

    @property
    def settings(self) -> dict[str, Any]:
        return self.config.get("config", {})

    @property
    def run(self) -> RunFacts:
        """summary.json's `run` record (model, corpus, ctx, windows, documents, clusters)."""
        if self.summary.run is None:
            raise SpectraError(f"{self.path}/summary.json records no run; rerun the sweep.")
        return self.summary.run

    @property
    def model(self) -> str:
        return self.run.model

    @property
    def ctx(self) -> int:
        return self.run.ctx

    @property
    def dtype(self) -> str:
        return str(self.config.get("environment", {}).get("dtype", self.settings.get("dtype")))

    @property
    def criteria(self) -> Criteria:
        return self.summary.thresholds

    @property
    def q_source(self) -> str:
        """Where ‖q‖ was read: the method and the tensor (config.json `q_source`)."""
        q = self.config.get("q_source", {})
        return f"{q.get('method', '?')}: {q.get('source', '?')}"

    @property
    def n_boot(self) -> int:
        return int(self.settings.get("n_boot", 1000))

    @property
    def seed(self) -> int:
        return int(self.settings.get("seed", 0))

    @property
    def included(self) -> Bool[np.ndarray, "layer head"]:
        """Heads that count in shares and figures: all but those marked degenerate."""
        a = self.architecture
        keep = np.ones((a.n_layers, a.n_heads), dtype=bool)
        t = self.head_stats
        flag = is_degenerate(t)
        keep[t["layer"].to_numpy()[flag], t["head"].to_numpy()[flag]] = False
        return keep

    @property
    def heads(self) -> pd.DataFrame:
        """head_stats.csv without its degenerate heads."""
        t = self.head_stats
        return t[self.included[t["layer"].to_numpy(), t["head"].to_numpy()]]


@dataclass(frozen=True)
class BudgetRun:
    """A finished Phase 2 folder: its records and its typed summary (the verdict per budget)."""

    path: Path
    config: dict[str, Any]
    summary: Summary
    curves: pd.DataFrame

    @property
    def run(self) -> dict[str, Any]:
        return self.summary.run

    @property
    def model(self) -> str:
        return str(self.run.get("model", self.config.get("config", {}).get("model", "")))

    @property
    def ctx(self) -> int:
        return int(self.run.get("ctx", self.config.get("config", {}).get("ctx")))

    @property
    def verdicts(self) -> list[BudgetVerdict]:
        """One verdict per budget (call, KL ratio qnorm / head_position and its interval), in the
        summary's order."""
        return self.summary.budgets


Run = SweepRun | BudgetRun


def _records(layout: Layout, kind: str, schema: int) -> tuple[dict, dict]:
    """config.json and summary.json of a finished folder of `kind`, schema checked."""
    if not layout.root.is_dir():
        raise SpectraError(f"results folder {layout.root} does not exist.")
    if not layout.config.is_file():
        raise SpectraError(
            f"{layout.root} is not a Spectra results folder (it has no {layout.CONFIG})."
        )
    config = read_json_object(layout.config)
    found = config.get("schema_version")
    if found != schema:
        raise SpectraError(
            f"{layout.root} holds a {kind} folder of schema {found}; this Spectra reads schema "
            f"{schema}."
        )
    if not layout.summary.is_file():
        raise SpectraError(
            f"{layout.root} is not a finished {kind} folder (it has no {layout.SUMMARY} yet: "
            "its run is still going or was stopped, and the same command resumes it)."
        )
    return config, read_json_object(layout.summary)


def _require(layout: Layout, names: tuple[str, ...], kind: str) -> None:
    for name in names:
        if not layout.path(name).exists():
            raise SpectraError(
                f"{layout.root} is not a finished {kind} folder (it has no {name}: its run is "
                "still going or was stopped, and the same command resumes it)."
            )


def load_sweep(folder: str | Path) -> SweepRun:
    """A finished sweep folder (SpectraError in one sentence naming it otherwise)."""
    layout = SweepLayout(Path(folder))
    if read_json_object(layout.config).get("phase") == PHASE2:
        raise SpectraError(f"{layout.root} is a Phase 2 folder, not a sweep folder.")
    config, summary = _records(layout, "sweep", SCHEMA_VERSION)
    _require(layout, (layout.HEAD_STATS, layout.META), "sweep")
    if "attention" not in config:
        raise SpectraError(f"{layout.config} records no attention facts; rerun the sweep.")
    meta = pd.read_csv(layout.meta)
    window_ids = meta["window_id"].to_numpy()
    stats = np.stack([s["stats"] for _, s in checked_shards(layout, "trained", window_ids)])
    table = pd.read_csv(layout.head_stats).sort_values(["layer", "head"]).reset_index(drop=True)
    return SweepRun(
        path=layout.root,
        config=config,
        summary=Verdict.from_json(summary),
        head_stats=table,
        meta=meta,
        stats=stats,
        architecture=Architecture.of(config["attention"]),
    )


def load_budget_run(folder: str | Path) -> BudgetRun:
    """A finished Phase 2 folder (SpectraError in one sentence naming it otherwise)."""
    layout = BudgetLayout(Path(folder))
    config, summary = _records(layout, "Phase 2", BUDGET_SCHEMA_VERSION)
    _require(layout, (layout.CURVES,), "Phase 2")
    return BudgetRun(
        path=layout.root,
        config=config,
        summary=Summary.from_json(summary),
        curves=pd.read_csv(layout.curves),
    )


def load_run(folder: str | Path) -> Run:
    """A finished sweep or Phase 2 folder, told apart by config.json's `phase`."""
    if read_json_object(Layout(Path(folder)).config).get("phase") == PHASE2:
        return load_budget_run(folder)
    return load_sweep(folder)
