"""The pass rule of Phase 1, one object: what makes a head pass and the run's criteria met.

The verdict, the head table's `passes` column, the report and the figures all read it; a run
records it in config.json and summary.json (`Verdict.thresholds`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spectra_interp.settings import check_all, open_fraction, setting


@dataclass(frozen=True)
class Criteria:
    """A head passes when |r| >= r_threshold and its cluster-level BH q < fdr; the run's
    criteria ask that at least min_share of heads pass and that the mean permuted r is within
    perm_tolerance of 0 (the seed's success criteria, DESIGN.md)."""

    r_threshold: float = setting(
        0.5, "a head passes when |r| reaches this", check=open_fraction, identity=False
    )
    fdr: float = setting(
        0.01, "... and its BH q-value (cluster-level p) is below this", check=open_fraction,
        identity=False,
    )  # fmt: skip
    min_share: float = setting(
        0.10, "share of heads that must pass for the effect-size criterion",
        check=open_fraction, identity=False,
    )  # fmt: skip
    perm_tolerance: float = setting(
        0.02, "the mean permuted r must be within this of 0", check=open_fraction,
        identity=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_all(self)

    def strong(self, r: Any) -> np.ndarray:
        """|r| >= r_threshold (NaN is not strong)."""
        return np.abs(np.nan_to_num(np.asarray(r, dtype=np.float64))) >= self.r_threshold

    def passes(self, r: Any, q: Any) -> np.ndarray:
        """The pass rule, element-wise."""
        q = np.nan_to_num(np.asarray(q, dtype=np.float64), nan=1.0)
        return self.strong(r) & (q < self.fdr)

    def describe(self) -> str:
        return f"|r| >= {self.r_threshold} and cluster q < {self.fdr}"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
