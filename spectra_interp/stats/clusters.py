"""The units of inference: documents when a run has enough of them, else windows.

Windows cut from one book share an author and a style, so they are not independent samples of
text; with at least `MIN_DOCUMENTS` documents the document is the cluster of the jackknife and
the bootstrap, with fewer the window is (and the output says which).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Bool, Int

MIN_DOCUMENTS = 8
DOCUMENT, WINDOW = "document", "window"


@dataclass(frozen=True)
class Clusters:
    """The cluster of each window (rows in window order) and what a cluster is."""

    ids: Int[np.ndarray, " window"]
    unit: str

    @property
    def n(self) -> int:
        return int(self.ids.max()) + 1 if self.ids.size else 0

    @classmethod
    def windows(cls, n_windows: int) -> Clusters:
        return cls(np.arange(n_windows), WINDOW)

    @classmethod
    def of(cls, meta: pd.DataFrame) -> Clusters:
        """Documents (source and id) when there are at least MIN_DOCUMENTS, else windows."""
        documents = meta["source"].astype(str) + "/" + meta["doc_id"].astype(str)
        ids, uniques = pd.factorize(documents)
        if len(uniques) >= MIN_DOCUMENTS:
            return cls(ids.astype(np.int64), DOCUMENT)
        return cls.windows(len(meta))

    def rows(self, pick: Bool[np.ndarray, " window"]) -> Clusters:
        """The windows `pick` selects, their clusters renumbered from 0 in order of appearance."""
        return Clusters(pd.factorize(self.ids[pick])[0].astype(np.int64), self.unit)

    def sum(self, per_window: np.ndarray) -> np.ndarray:
        """Per-window sums added up per cluster: [window, ...] -> [cluster, ...]."""
        per_window = np.asarray(per_window, dtype=np.float64)
        out = np.zeros((self.n, *per_window.shape[1:]))
        np.add.at(out, self.ids, per_window)
        return out
