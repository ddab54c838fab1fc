"""Where every file of a results folder lives: the only place file names are written.

Sweep folder (schema 2):
    config.json                              settings, identity, versions, device, q_source
    windows/tokens.npy, windows/meta.csv     the windows' token ids and where each came from
    shards/<stage>/window_XXXXX.npz          per-window sufficient statistics + token sample
    claims/<stage>/block_XXXXX.json          a block some live run is computing (concurrency)
    head_stats.csv, summary.json             the per-head table and the verdict
    token_sample.parquet, alpha_response.csv the pooled token sample; H against query scale
    attention_sample.npz, report.html        patterns of a few slices; the report
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from spectra_interp.settings import columns_markdown

SCHEMA_VERSION = 2
SHARD_PATTERN = re.compile(r"window_(\d{5,})\.npz")


@dataclass(frozen=True)
class Layout:
    """What every results folder shares: a root, config.json, summary.json, report.html, shards
    and claims per stage (a model, or a phase of the run), and the README table of its files."""

    root: Path

    CONFIG = "config.json"
    SUMMARY = "summary.json"
    REPORT = "report.html"
    SHARDS = "shards"
    CLAIMS = "claims"
    # The run's windows, written once so a resumed run reads the very same ones back.
    WINDOWS = "windows"
    TOKENS_FILE = "tokens.npy"
    META_FILE = "meta.csv"
    # What a finished run writes beside its shards, and its folders (what --overwrite removes).
    OUTPUTS: ClassVar[tuple[str, ...]] = ()
    FOLDERS: ClassVar[tuple[str, ...]] = ()
    DESCRIPTIONS: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def files_markdown(cls) -> str:
        """The README's table of the folder."""
        return columns_markdown(cls.DESCRIPTIONS, ("file", "contents"))

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    def shard_dir(self, stage: str) -> Path:
        return self.root / self.SHARDS / stage

    def shard(self, stage: str, window_id: int) -> Path:
        return self.shard_dir(stage) / f"window_{window_id:05d}.npz"

    def relative_shard(self, stage: str, window_id: int) -> str:
        """A shard's path relative to the folder (what ranks on other machines send)."""
        return str(self.shard(stage, window_id).relative_to(self.root))

    def claim(self, stage: str, block: int) -> Path:
        return self.root / self.CLAIMS / stage / f"block_{block:05d}.json"

    def done_windows(self, stage: str) -> set[int]:
        """Window ids whose shard of `stage` is complete (shards are renamed into place whole)."""
        folder = self.shard_dir(stage)
        if not folder.is_dir():
            return set()
        return {int(m.group(1)) for p in folder.iterdir() if (m := SHARD_PATTERN.fullmatch(p.name))}


@dataclass(frozen=True)
class SweepLayout(Layout):
    """The paths of one sweep results folder."""

    TOKENS = f"{Layout.WINDOWS}/{Layout.TOKENS_FILE}"
    META = f"{Layout.WINDOWS}/{Layout.META_FILE}"
    HEAD_STATS = "head_stats.csv"
    TOKEN_SAMPLE = "token_sample.parquet"
    ALPHA_RESPONSE = "alpha_response.csv"
    ATTENTION = "attention_sample.npz"
    # What a finished run writes beside its shards (and what --overwrite removes).
    OUTPUTS = (
        Layout.CONFIG,
        HEAD_STATS,
        Layout.SUMMARY,
        TOKEN_SAMPLE,
        ALPHA_RESPONSE,
        ATTENTION,
        Layout.REPORT,
    )
    FOLDERS = (Layout.WINDOWS, Layout.SHARDS, Layout.CLAIMS)
    DESCRIPTIONS = {
        Layout.CONFIG: "settings, resume identity, versions, device, dtype, seed, git commit, "
        "where ‖q‖ was read (`q_source`, with the kernel of each layer) and each layer's "
        "attention facts",
        f"{TOKENS}, {META}": "the windows' token ids; their source, document and offset",
        f"{Layout.SHARDS}/<stage>/window_XXXXX.npz": "per-window sufficient statistics and token "
        "sample of one model (stage `trained` or `random_init`; the unit of resume)",
        f"{Layout.CLAIMS}/<stage>/block_XXXXX.json": "a block of windows a live run is computing",
        HEAD_STATS: "one row per (layer, head); columns below",
        Layout.SUMMARY: "the verdict: pass rule, criteria met or not, controls, beyond r",
        TOKEN_SAMPLE: "the token sample of both models: ‖q‖, H, keys seen, max attention, "
        "k_eff, gain per sampled query",
        ALPHA_RESPONSE: "`layer, head, scale, mean_entropy`: H with the query scaled by alpha",
        ATTENTION: "every head's pattern, ‖q‖ and H on short excerpts (attention views)",
        Layout.REPORT: "the self-contained interactive report",
    }

    @property
    def tokens(self) -> Path:
        return self.root / self.TOKENS

    @property
    def meta(self) -> Path:
        return self.root / self.META

    @property
    def head_stats(self) -> Path:
        return self.root / self.HEAD_STATS

    @property
    def token_sample(self) -> Path:
        return self.root / self.TOKEN_SAMPLE

    @property
    def alpha_response(self) -> Path:
        return self.root / self.ALPHA_RESPONSE

    @property
    def attention(self) -> Path:
        return self.root / self.ATTENTION


# 2: one loss-optimal allocator (plan.json, allocation.csv) and the typed verdict in summary.json.
BUDGET_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class BudgetLayout(Layout):
    """The paths of one Phase 2 (key budget) results folder.

    Three stages write per-window shards: the dense passes of the calibration and evaluation
    windows (‖q‖ and what the budgets are set from), then every arm and budget on each
    evaluation window. `plan.json` (each arm's cells and allocation, the top-p masses) sits between
    them.
    """

    PLAN = "plan.json"
    CURVES = "budget_curves.csv"
    PER_HEAD = "per_head.csv"
    ALLOCATION = "allocation.csv"
    # The two disjoint sets of documents, and the stages that write shards.
    CALIBRATION, EVALUATION, MASKED = "calibration", "evaluation", "masked"
    SPLITS = (CALIBRATION, EVALUATION)
    STAGES = (CALIBRATION, EVALUATION, MASKED)
    OUTPUTS = (Layout.CONFIG, PLAN, CURVES, PER_HEAD, ALLOCATION, Layout.SUMMARY, Layout.REPORT)
    FOLDERS = (Layout.WINDOWS, Layout.SHARDS, Layout.CLAIMS)
    DESCRIPTIONS = {
        Layout.CONFIG: "settings, resume identity, versions, device, dtype, the documents of each "
        "split and each layer's attention facts",
        f"{Layout.WINDOWS}/<split>/{Layout.TOKENS_FILE}, {Layout.META_FILE}": "token ids of the "
        "calibration and evaluation windows; their source, document and offset",
        f"{Layout.SHARDS}/{CALIBRATION}/window_XXXXX.npz": "dense pass of a calibration window: "
        "‖q‖, entropy and every evaluated query's loss at each kept fraction of the grid",
        f"{Layout.SHARDS}/{EVALUATION}/window_XXXXX.npz": "dense pass of an evaluation window: "
        "‖q‖, entropy and the top-p arms' keys at a grid of masses (what the budgets are set from)",
        f"{Layout.SHARDS}/{MASKED}/window_XXXXX.npz": "every arm and budget on one evaluation "
        "window: per-token KL, NLL and top-1 agreement, keys kept per head (the unit of resume)",
        f"{Layout.CLAIMS}/<stage>/block_XXXXX.json": "a block of windows a live run is computing",
        PLAN: "each fitted arm's cells, hulls and allocation per budget (λ), the recency scale "
        "and the top-p masses",
        CURVES: "one row per (arm, budget), dense once; columns below",
        PER_HEAD: "one row per (arm, budget, layer, head): the head's keys kept and share",
        ALLOCATION: "one row per (fitted arm, budget, cell): the fraction the cell keeps",
        Layout.SUMMARY: "the verdict: the KL ratio qnorm / head_position per budget with its "
        "interval and call, the shuffled control, the gaps to entropy and the oracle closed, how "
        "the budgets were met, the breakdown by source",
        Layout.REPORT: "the self-contained report: quality against keys kept, per-head budgets",
    }

    @classmethod
    def holds(cls, root: str | Path) -> bool:
        """Whether `root` is a finished Phase 2 folder (it has the budget curves)."""
        return (Path(root) / cls.CURVES).is_file()

    @property
    def plan(self) -> Path:
        return self.root / self.PLAN

    @property
    def curves(self) -> Path:
        return self.root / self.CURVES

    @property
    def per_head(self) -> Path:
        return self.root / self.PER_HEAD

    @property
    def allocation(self) -> Path:
        return self.root / self.ALLOCATION

    def split_tokens(self, split: str) -> Path:
        return self.root / self.WINDOWS / split / self.TOKENS_FILE

    def split_meta(self, split: str) -> Path:
        return self.root / self.WINDOWS / split / self.META_FILE
