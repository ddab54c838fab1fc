"""The engine with a small experiment of its own (no model): folder, stages, resume, merge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from spectra_interp import models
from spectra_interp.config import SweepConfig
from spectra_interp.corpus import Windows
from spectra_interp.errors import SpectraError
from spectra_interp.results import store
from spectra_interp.results.layout import SweepLayout
from spectra_interp.runner import Run, Stage, run_experiment, run_record
from spectra_interp.runner.windows import stored_or_built

N_WINDOWS, CTX = 5, 8


@dataclass(frozen=True)
class Total:
    """A typed summary: the sum of every token id over both stages."""

    total: int

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total}


@dataclass
class Counting:
    """Two stages over the same windows (token sums, then twice them), merged into a total."""

    config: SweepConfig
    layout: SweepLayout = field(init=False)
    resume_stage: str = "sums"
    windows: Windows | None = None
    computed: list[tuple[str, list[int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layout = SweepLayout(self.config.out_dir)

    def disk_bytes(self, hf_config: Any) -> int:
        return 2**20

    def record(self, run: Run) -> dict[str, Any]:
        return run_record(1, self.config, run.dist)

    def prepare(self, run: Run, tokenizer: Any) -> None:
        def build() -> dict[str, Windows]:
            tokens = np.arange(N_WINDOWS * CTX, dtype=np.int64).reshape(N_WINDOWS, CTX)
            meta = pd.DataFrame({"window_id": np.arange(N_WINDOWS), "doc_id": "d"})
            return {"w": Windows(tokens=tokens, meta=meta, bos=False)}

        files = {"w": (self.layout.tokens, self.layout.meta)}
        self.windows = stored_or_built(files, tokenizer, build, write=run.main)["w"]

    def stages(self, run: Run) -> Iterator[Stage]:
        assert self.windows is not None
        for name, factor in (("sums", 1), ("doubled", 2)):

            def compute(tokens: Any, ids: list[int], name: str = name, factor: int = factor):
                self.computed.append((name, ids))
                return [{"sum": np.array(int(t.sum()) * factor)} for t in tokens]

            yield Stage(name, self.windows, compute)

    def merge(self, run: Run) -> Total:
        shards = [
            store.read_shard(self.layout, stage, w)
            for stage in ("sums", "doubled")
            for w in range(N_WINDOWS)
        ]
        return Total(sum(int(s["sum"]) for s in shards))


@pytest.fixture
def no_model(monkeypatch):
    """The engine's model look-ups answered without a model (a config of 64 positions)."""
    config = SimpleNamespace(max_position_embeddings=64)
    monkeypatch.setattr(models, "load_config", lambda source: config)
    monkeypatch.setattr(models, "load_tokenizer", lambda source: SimpleNamespace(bos_token_id=None))
    monkeypatch.setattr("spectra_interp.runner.windows.added_bos_id", lambda tokenizer: None)


def test_stages_run_once_and_the_merge_is_written(tmp_path, no_model):
    config = SweepConfig(out=str(tmp_path / "run"), ctx=CTX, batch_size=2, progress=False)
    said: list[str] = []
    experiment = Counting(config)
    root = run_experiment(experiment, log=said.append)
    expected = 3 * int(np.arange(N_WINDOWS * CTX).sum())
    assert json.loads((root / "summary.json").read_text()) == {"total": expected}
    assert [ids for name, ids in experiment.computed if name == "sums"] == [[0, 1], [2, 3], [4]]
    assert json.loads((root / "config.json").read_text())["identity"]["ctx"] == CTX
    again = Counting(config)
    run_experiment(again, log=said.append)
    assert again.computed == [] and f"Resuming {root}: 5 windows already done." in said
    assert json.loads((root / "summary.json").read_text()) == {"total": expected}


def test_a_context_beyond_the_model_is_refused_before_any_work(tmp_path, no_model):
    config = SweepConfig(out=str(tmp_path / "run"), ctx=128, progress=False)
    with pytest.raises(SpectraError, match="--ctx 128 exceeds the 64 positions"):
        run_experiment(Counting(config), log=lambda _: None)
    assert not (tmp_path / "run").exists()
