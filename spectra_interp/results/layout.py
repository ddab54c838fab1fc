"""Where every file of a results folder lives: the only place file names are written.

Sweep folder (schema 2):
    config.json                              settings, identity, versions, device, q_source
    windows/tokens.npy, windows/meta.csv     the windows' token ids and where each came from
    shards/<model>/window_XXXXX.npz          per-window sufficient statistics + token sample
    claims/<model>/block_XXXXX.json          a block some live run is computing (concurrency)
    head_stats.csv, summary.json             the per-head table and the verdict
    token_sample.parquet, alpha_response.csv the pooled token sample; H against query scale
    attention_sample.npz, report.html        patterns of a few slices; the report
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2
SHARD_PATTERN = re.compile(r"window_(\d{5,})\.npz")


@dataclass(frozen=True)
class SweepLayout:
    """The paths of one sweep results folder."""

    root: Path

    CONFIG = "config.json"
    TOKENS = "windows/tokens.npy"
    META = "windows/meta.csv"
    SHARDS = "shards"
    CLAIMS = "claims"
    HEAD_STATS = "head_stats.csv"
    SUMMARY = "summary.json"
    TOKEN_SAMPLE = "token_sample.parquet"
    ALPHA_RESPONSE = "alpha_response.csv"
    ATTENTION = "attention_sample.npz"
    REPORT = "report.html"
    # What a finished run writes beside its shards (and what --overwrite removes).
    OUTPUTS = (CONFIG, HEAD_STATS, SUMMARY, TOKEN_SAMPLE, ALPHA_RESPONSE, ATTENTION, REPORT)
    FOLDERS = ("windows", SHARDS, CLAIMS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

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
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def token_sample(self) -> Path:
        return self.root / self.TOKEN_SAMPLE

    @property
    def alpha_response(self) -> Path:
        return self.root / self.ALPHA_RESPONSE

    @property
    def attention(self) -> Path:
        return self.root / self.ATTENTION

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    def shard_dir(self, model: str) -> Path:
        return self.root / self.SHARDS / model

    def shard(self, model: str, window_id: int) -> Path:
        return self.shard_dir(model) / f"window_{window_id:05d}.npz"

    def relative_shard(self, model: str, window_id: int) -> str:
        """A shard's path relative to the folder (what ranks on other machines send)."""
        return str(self.shard(model, window_id).relative_to(self.root))

    def claim(self, model: str, block: int) -> Path:
        return self.root / self.CLAIMS / model / f"block_{block:05d}.json"

    def done_windows(self, model: str) -> set[int]:
        """Window ids whose shard is complete (a shard is only ever renamed into place whole)."""
        folder = self.shard_dir(model)
        if not folder.is_dir():
            return set()
        return {int(m.group(1)) for p in folder.iterdir() if (m := SHARD_PATTERN.fullmatch(p.name))}
