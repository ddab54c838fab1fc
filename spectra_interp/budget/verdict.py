"""The Phase 2 verdict, per budget, and the typed summary that holds it (pure).

The statistic is the ratio R = Σ_d KL_qnorm(d) / Σ_d KL_head_position(d) over the evaluation
documents d (both arms on the same tokens), with a two-sided (1 - 2·alpha) percentile interval
from a bootstrap that resamples whole documents (both arms together). The call, against an
equivalence margin m (two one-sided tests in interval form, Schuirmann 1987):

- "helps": the interval's upper end < 1, and qnorm beats its shuffled control in the one-sided
  paired test (jackknife over documents, p < alpha);
- "hurts": the interval's lower end > 1;
- "no useful effect": the interval lies inside [1 - m, 1 + m];
- "undecided": none of these; with it, how many documents would decide it at the observed spread
  (the interval's half-width shrinking as 1/sqrt(documents)).

Beside it the share of the head_position -> entropy gap (what a perfect scalar per query could
add) and of the head_position -> oracle_top_p gap that qnorm closes, with document-bootstrap
intervals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from spectra_interp.results.layout import BUDGET_SCHEMA_VERSION
from spectra_interp.stats.inference import bootstrap_ci

HELPS, HURTS, NO_EFFECT, UNDECIDED = "helps", "hurts", "no useful effect", "undecided"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval (None where undefined)."""

    point: float | None
    low: float | None
    high: float | None

    def text(self) -> str:
        """'point [low, high]' to three decimals, or 'n/a'."""
        if self.point is None or self.low is None or self.high is None:
            return "n/a"
        return f"{self.point:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def ratio_interval(
    kl_arm: Float[np.ndarray, " doc"],
    kl_rival: Float[np.ndarray, " doc"],
    *,
    level: float,
    n_boot: int,
    seed: int,
) -> Interval:
    """Σ KL_arm / Σ KL_rival with its document-bootstrap percentile interval."""
    stats = np.stack([kl_arm, kl_rival], axis=-1).astype(np.float64)

    def ratio(s: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return s[..., 0] / s[..., 1]

    low, high = bootstrap_ci(stats, ratio, n_boot=n_boot, seed=seed, level=level)
    return Interval(_finite(ratio(stats.sum(0))), _finite(low), _finite(high))


def gap_closed(
    kl_arm: np.ndarray, kl_from: np.ndarray, kl_to: np.ndarray, *, level: float, n_boot: int,
    seed: int,
) -> Interval:  # fmt: skip
    """(KL_from - KL_arm) / (KL_from - KL_to): the share of the gap from one arm to a better one
    that `arm` closes, with its document-bootstrap interval."""
    stats = np.stack([kl_arm, kl_from, kl_to], axis=-1).astype(np.float64)

    def share(s: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s[..., 1] - s[..., 0]) / (s[..., 1] - s[..., 2])

    low, high = bootstrap_ci(stats, share, n_boot=n_boot, seed=seed, level=level)
    return Interval(_finite(share(stats.sum(0))), _finite(low), _finite(high))


def call(ratio: Interval, margin: float, beats_control: bool) -> str:
    """helps / hurts / no useful effect / undecided from the ratio's interval (see the module)."""
    if ratio.low is None or ratio.high is None:
        return UNDECIDED
    if ratio.high < 1 and beats_control:
        return HELPS
    if ratio.low > 1:
        return HURTS
    if 1 - margin <= ratio.low and ratio.high <= 1 + margin:
        return NO_EFFECT
    return UNDECIDED


def documents_to_decide(ratio: Interval, margin: float, n_documents: int) -> int | None:
    """The evaluation documents at which the observed spread would decide the call: the fewest
    whose interval (half-width shrinking as 1/sqrt(n)) would either exclude 1 or fit inside the
    margin. None where undefined or where no number would (a point on the margin)."""
    if ratio.point is None or ratio.low is None or ratio.high is None:
        return None
    half = max(ratio.high - ratio.point, ratio.point - ratio.low)
    if half <= 0:
        return n_documents
    distance = abs(ratio.point - 1)
    room = margin - distance  # half-width that fits inside the margin
    wanted = max(distance, room)
    if wanted <= 0:
        return None
    return max(n_documents, math.ceil(n_documents * (half / wanted) ** 2))


@dataclass(frozen=True)
class BudgetVerdict:
    """The verdict at one budget."""

    budget: float
    ratio: Interval  # KL qnorm / KL head_position
    call: str
    documents_to_decide: int | None
    qnorm_vs_control: dict[str, float]  # the paired test of qnorm against qnorm_shuffled
    beats_control: bool
    entropy_gap_closed: Interval  # share of head_position -> entropy that qnorm closes
    oracle_gap_closed: Interval  # share of head_position -> oracle_top_p that qnorm closes
    control_oracle_gap_closed: Interval


@dataclass(frozen=True)
class Summary:
    """summary.json: the question, the verdict per budget and in a sentence, how the budgets
    were met, the breakdown by source and the run."""

    question: str
    verdict: str
    margin: float
    alpha: float
    ci_level: float
    n_documents: int
    budgets: list[BudgetVerdict]
    budgets_met: dict[str, Any]
    by_source: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    schema: int = BUDGET_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _json_ready(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        budgets = [
            BudgetVerdict(
                **{
                    **b,
                    **{
                        k: Interval(**b[k])
                        for k in (
                            "ratio", "entropy_gap_closed", "oracle_gap_closed",
                            "control_oracle_gap_closed",
                        )
                    },
                }
            )
            for b in data["budgets"]
        ]  # fmt: skip
        return cls(**{**data, "budgets": budgets})


def sentence(verdicts: list[BudgetVerdict], n_documents: int, margin: float, level: float) -> str:
    """The finding in one sentence, whichever way it went."""
    parts = []
    for v in verdicts:
        span = v.ratio.text()
        more = (
            f", about {v.documents_to_decide} documents would decide it"
            if v.call == UNDECIDED and v.documents_to_decide
            else ""
        )
        parts.append(f"at budget {v.budget:g}: {v.call} (KL ratio {span}{more})")
    return (
        f"‖q‖ against head and position, KL ratio qnorm / head_position with {100 * level:g}% "
        f"document-bootstrap intervals over {n_documents} evaluation documents and margin "
        f"±{margin:g}: " + "; ".join(parts) + "."
    )


def _json_ready(value: Any) -> Any:
    """NaN and infinity become null (JSON has neither); numpy scalars become Python's."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
