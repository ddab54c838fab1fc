"""Reading a results folder back: per-window shards for the merge, and a finished folder as one
typed object for the report, the notebooks and the tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import SweepLayout
from spectra_interp.results.store import read_shard
from spectra_interp.stats.beyond import SampleArrays
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.moments import STATS_VERSION
from spectra_interp.stats.sample import sample_frame
from spectra_interp.stats.verdict import Verdict

SAMPLE_PREFIX = "sample_"


def shard_record(stats: np.ndarray, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What one window's shard holds: its moment sums and its token sample."""
    return {
        "stats": stats,
        "stats_version": np.array(STATS_VERSION),
        **{f"{SAMPLE_PREFIX}{k}": v for k, v in sample.items()},
    }


@dataclass(frozen=True)
class Shards:
    """One model's shards read back: stacked sums, the token sample as rows and as arrays."""

    stats: Float[np.ndarray, "window layer head moment"]
    frame: pd.DataFrame
    arrays: SampleArrays


def checked_shards(
    layout: SweepLayout, stage: str, window_ids: np.ndarray
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(window id, shard) of one model's stage (`trained` or `random_init`) in window order;
    every shard must exist and be of this version of the statistics."""
    missing = sorted(set(window_ids.tolist()) - layout.done_windows(stage))
    if missing:
        raise SpectraError(
            f"{layout.root}: {len(missing)} {stage} windows have no shard (e.g. {missing[0]})."
        )
    for wid in window_ids.tolist():
        shard = read_shard(layout, stage, wid)
        if int(shard["stats_version"]) != STATS_VERSION:
            raise SpectraError(
                f"{layout.root}: the shard of window {wid} was written by another version of "
                "the statistics; rerun with --overwrite."
            )
        yield wid, shard


def load_shards(layout: SweepLayout, stage: str, window_ids: np.ndarray) -> Shards:
    """Every window's shard of one model (its stage: `trained` or `random_init`), in window
    order; the token sample's `model` column names the stage."""
    stats, frames, samples = [], [], []
    for wid, shard in checked_shards(layout, stage, window_ids):
        stats.append(shard["stats"])
        sample = {
            k.removeprefix(SAMPLE_PREFIX): v
            for k, v in shard.items()
            if k.startswith(SAMPLE_PREFIX)
        }
        samples.append(sample)
        frames.append(sample_frame(sample, window_id=wid, model=stage))
    return Shards(np.stack(stats), pd.concat(frames, ignore_index=True), _arrays(samples))


def _arrays(samples: list[dict[str, np.ndarray]]) -> SampleArrays:
    def stack(name: str) -> np.ndarray:
        return np.stack([s[name] for s in samples])

    return SampleArrays(
        qnorm=stack("qnorm"),
        entropy=stack("entropy"),
        n_keys=stack("n_keys"),
        max_attn=stack("max_attn"),
        k_eff=stack("k_eff"),
        gain=stack("gain"),
        scaled_mean=np.stack([s["scaled_entropy"].mean(axis=2) for s in samples]),
    )


@dataclass(frozen=True)
class AttentionSample:
    """Slices of attention kept for the views: per slice, its tokens, and every head's pattern
    among them with those queries' ‖q‖ and H."""

    window_ids: Int[np.ndarray, " slice"]
    starts: Int[np.ndarray, " slice"]
    token_strs: list[list[str]]
    pattern: Float[np.ndarray, "slice layer head query key"]
    qnorm: Float[np.ndarray, "slice layer head pos"]
    entropy: Float[np.ndarray, "slice layer head pos"]


@dataclass
class Results:
    """A results folder read into plain objects; only head_stats.csv is required."""

    path: Path
    head_stats: pd.DataFrame
    config: dict = field(default_factory=dict)
    summary: Verdict | None = None
    token_sample: pd.DataFrame | None = None
    attention: AttentionSample | None = None
    alpha_response: pd.DataFrame | None = None

    @property
    def layout(self) -> SweepLayout:
        return SweepLayout(self.path)

    @property
    def criteria(self) -> Criteria:
        """The pass rule the run recorded (the defaults for a folder that recorded none)."""
        return Criteria() if self.summary is None else self.summary.thresholds

    @property
    def settings(self) -> dict:
        """The run's settings from config.json (empty for a folder without one)."""
        value = self.config.get("config", {})
        return value if isinstance(value, dict) else {}

    def head(self, layer: int, head: int) -> pd.Series:
        """The head_stats row of one head."""
        t = self.head_stats
        rows = t[(t["layer"] == layer) & (t["head"] == head)]
        if rows.empty:
            raise SpectraError(f"there is no head L{layer} H{head} in {self.layout.head_stats}.")
        return rows.iloc[0]

    def sample(self, layer: int, head: int, model: str = "trained") -> pd.DataFrame:
        """The token-sample rows of one head of one model ("trained" or "random_init")."""
        s = self.token_sample
        if s is None:
            raise SpectraError(f"{self.path} has no {self.layout.TOKEN_SAMPLE}.")
        keep = (s["layer"] == layer) & (s["head"] == head)
        if "model" in s:
            keep &= s["model"] == model
        return s[keep]


def read_json_object(path: Path) -> dict:
    """A JSON file as a dict ({} when absent), or one clear sentence when it is not JSON."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpectraError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}).") from err
    return value if isinstance(value, dict) else {"value": value}


def read_summary(path: Path) -> Verdict | None:
    """summary.json as a `Verdict` (None when the folder has none)."""
    recorded = read_json_object(path)
    return Verdict.from_json(recorded) if recorded else None


def _attention(path: Path) -> AttentionSample | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return AttentionSample(
            window_ids=z["window_ids"],
            starts=z["starts"],
            token_strs=[[str(t) for t in row] for row in z["token_strs"]],
            pattern=z["pattern"].astype(np.float32),
            qnorm=z["qnorm"].astype(np.float32),
            entropy=z["entropy"].astype(np.float32),
        )


def load_results(results_dir: str | Path) -> Results:
    """Read a results folder; only head_stats.csv is required, the rest is read if present."""
    layout = SweepLayout(Path(results_dir))
    if not layout.root.is_dir():
        raise SpectraError(f"results folder {layout.root} does not exist.")
    if not layout.head_stats.is_file():
        raise SpectraError(f"{layout.root} has no {layout.HEAD_STATS}: run the sweep first.")
    table = pd.read_csv(layout.head_stats)
    missing = {"layer", "head"} - set(table.columns)
    if missing:
        raise SpectraError(f"{layout.head_stats} lacks the column(s) {', '.join(sorted(missing))}.")
    table = table.sort_values(["layer", "head"]).reset_index(drop=True)
    sample = pd.read_parquet(layout.token_sample) if layout.token_sample.is_file() else None
    return Results(
        path=layout.root,
        head_stats=table,
        config=read_json_object(layout.config),
        summary=read_summary(layout.summary),
        token_sample=sample,
        attention=_attention(layout.attention),
        alpha_response=(
            pd.read_csv(layout.alpha_response) if layout.alpha_response.is_file() else None
        ),
    )
