"""The two disjoint sets of documents: calibration (fits the rules) and evaluation (tests them).

Documents, not windows, are split, so no text that fitted a rule is ever used to judge it. The
split is drawn from the seed; each side is then cut into windows as the sweep cuts them
(`make_windows`, spread across documents), and written once to the results folder so a resumed
run reads the very same windows back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from spectra_interp.config import BudgetConfig
from spectra_interp.corpus import Document, Windows, load_documents, make_windows
from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import BudgetLayout
from spectra_interp.runner.windows import stored_or_built


def split_documents(
    docs: Sequence[Document], share: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """(calibration, evaluation): a seeded permutation of the documents, the first
    round(share · n) of them (at least one, and one left) for calibration, in corpus order."""
    if len(docs) < 2:
        raise SpectraError(
            f"Phase 2 fits on some documents and evaluates on others, so it needs at least 2 "
            f"documents; the corpus has {len(docs)}."
        )
    order = np.random.default_rng(seed).permutation(len(docs))
    n_cal = min(max(round(share * len(docs)), 1), len(docs) - 1)
    chosen = set(order[:n_cal].tolist())
    calibration = [d for i, d in enumerate(docs) if i in chosen]
    evaluation = [d for i, d in enumerate(docs) if i not in chosen]
    return calibration, evaluation


def document_names(meta: pd.DataFrame) -> pd.Series:
    """source/doc_id of each window: the cluster of the inference."""
    return meta["source"].astype(str) + "/" + meta["doc_id"].astype(str)


def build_splits(config: BudgetConfig, tokenizer: Any) -> dict[str, Windows]:
    """The calibration and evaluation windows of a run, from its corpus."""
    calibration, evaluation = split_documents(
        load_documents(config.corpus), config.calibration_share, config.seed
    )
    wanted = {
        BudgetLayout.CALIBRATION: (calibration, config.calibration_windows),
        BudgetLayout.EVALUATION: (evaluation, config.max_windows),
    }
    out = {}
    for split, (docs, max_windows) in wanted.items():
        try:
            out[split] = make_windows(
                docs, tokenizer, config.ctx, stride=config.stride, max_windows=max_windows,
                seed=config.seed, pack=config.pack,
            )  # fmt: skip
        except SpectraError as err:
            raise SpectraError(f"The {split} documents give no window: {err}.") from err
    return out


def prepare_splits(
    config: BudgetConfig, layout: BudgetLayout, tokenizer: Any, write: bool
) -> dict[str, Windows]:
    """The run's windows: read back from the folder on resume, else built (and written once,
    by the process that `write`s)."""
    files = {s: (layout.split_tokens(s), layout.split_meta(s)) for s in layout.SPLITS}
    return stored_or_built(files, tokenizer, lambda: build_splits(config, tokenizer), write)
