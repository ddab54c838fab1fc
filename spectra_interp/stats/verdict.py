"""The verdict: a head table summarised against the seed's success criteria, as a typed record
(`Verdict`, written as summary.json with `to_json` and read back with `from_json`) and as text.

`verdict` computes the head masks and numbers (`_counts`, `_per_layer`, `_checks`,
`_controls`, `beyond_r`) and shapes them into the record; the text is read off its attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from spectra_interp.errors import SpectraError
from spectra_interp.records import finite_or_none, from_json, to_json
from spectra_interp.stats.criteria import Criteria
from spectra_interp.stats.degenerate import degenerate_summary, measurable
from spectra_interp.stats.inference import CI_LEVEL

HYPOTHESIS = "H1: corr(‖q‖, attention entropy) < 0 per head"
BEST_SHOWN = 5
DEGENERATE_SHOWN = 12


# --- the record ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passing:
    """Heads that pass the rule, by the sign of their r."""

    total: int
    negative: int
    positive: int
    share_of_heads: float
    share_negative: float | None


@dataclass(frozen=True)
class LayerRow:
    """One layer: its heads, those passing by sign, and its r over heads."""

    layer: int
    heads: int
    passing: int
    negative: int
    positive: int
    mean_r: float | None
    min_r: float | None
    max_r: float | None


@dataclass(frozen=True)
class ShareCriterion:
    """A criterion on the share of heads (effect size)."""

    description: str
    met: bool
    heads: int
    share: float
    required_share: float


@dataclass(frozen=True)
class SignificanceCriterion(ShareCriterion):
    """The effect-size heads that also survive the correction."""

    strong_heads_not_significant: int
    max_q_of_passing: float | None


@dataclass(frozen=True)
class RandomizationCriterion:
    """The mean permuted r within its tolerance of 0."""

    description: str
    met: bool
    column: str
    mean_perm_r: float | None
    tolerance: float


@dataclass(frozen=True)
class Checks:
    """The seed's three success criteria."""

    effect_size: ShareCriterion
    significance: SignificanceCriterion
    randomization_control: RandomizationCriterion

    def items(self) -> list[tuple[str, ShareCriterion | RandomizationCriterion]]:
        return [
            ("effect_size", self.effect_size),
            ("significance", self.significance),
            ("randomization_control", self.randomization_control),
        ]


@dataclass(frozen=True)
class RandomInitControl:
    """The random-init model's r, and whether it can serve as a control at all
    (`stats.degenerate.control_usability`; None when that was not checked)."""

    available: bool
    mean_r: float | None
    mean_abs_r: float | None
    max_abs_r: float | None
    heads_abs_r_ge_threshold: int
    usable: bool | None = None
    constant_qnorm_heads: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class PositionControl:
    mean_abs_r: float | None
    mean_abs_partial_r: float | None
    mean_abs_r_passing: float | None
    mean_abs_partial_r_passing: float | None


@dataclass(frozen=True)
class WithinWindowControl:
    mean_abs_r: float | None
    mean_abs_within_window_r: float | None


@dataclass(frozen=True)
class Controls:
    """The controls' numbers (reported, not criteria). `randomization` holds
    `{mean, mean_abs, max_abs}_{perm_r, perm_r_within}` for the columns the table has."""

    randomization: dict[str, float | None]
    random_init: RandomInitControl
    position: PositionControl
    within_window: WithinWindowControl


@dataclass(frozen=True)
class DeltaR2:
    heads_ci_excludes_0: int
    heads_ci_below_0: int
    heads_ci_above_0: int
    share: float
    median: float | None
    median_abs: float | None


@dataclass(frozen=True)
class TemperatureShare:
    q25: float | None
    median: float | None
    q75: float | None
    heads: int


@dataclass(frozen=True)
class AurocHead:
    layer: int
    head: int
    auroc_low_entropy: float | None
    pearson_r: float | None
    delta_r2: float | None


@dataclass(frozen=True)
class BeyondR:
    """The second question: what ‖q‖ adds beyond position and beyond rescaling."""

    question: str
    delta_r2: DeltaR2
    temperature_share: TemperatureShare
    best_auroc_heads: list[AurocHead]
    finding: str


@dataclass(frozen=True)
class DegenerateHead:
    layer: int
    head: int
    reason: str


@dataclass(frozen=True)
class Degenerate:
    """The heads left out of every count, share, mean and median (`stats.degenerate`)."""

    count: int = 0
    heads: list[DegenerateHead] = field(default_factory=list)


@dataclass(frozen=True)
class RunFacts:
    """What the run was: model, corpus, windows, clusters, controls, seed, timings."""

    model: str
    corpus: str
    ctx: int
    n_windows: int
    n_documents: int
    cluster_unit: str
    n_clusters: int
    skip_first: int
    controls: list[str]
    seed: int
    timings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """summary.json of a Phase 1 run (its keys are these fields, in this order)."""

    hypothesis: str
    thresholds: Criteria
    heads_total: int
    heads_measured: int
    heads_with_r: int
    passing: Passing
    per_layer: list[LayerRow]
    controls: Controls
    criteria: Checks
    all_criteria_met: bool
    beyond_r: BeyondR | None = None
    degenerate: Degenerate = field(default_factory=Degenerate)
    run: RunFacts | None = None

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        """A summary.json read back (the defaults for a folder that recorded no thresholds or
        degenerate heads: every head measured)."""
        defaults = {"thresholds": {}, "heads_measured": data.get("heads_total")}
        return from_json(cls, {**defaults, **data}, "summary.json")

    def text(self) -> str:
        """A few printable lines: the counts, each criterion, the controls, beyond r."""
        return _text(self)


# --- computing -------------------------------------------------------------------------------


def _mean(a: pd.Series) -> float | None:
    a = a.dropna()
    return finite_or_none(a.mean()) if len(a) else None


def _max(a: pd.Series) -> float | None:
    a = a.dropna()
    return finite_or_none(a.max()) if len(a) else None


@dataclass(frozen=True)
class _Masks:
    """Per head: |r| reaches the threshold; passes the rule; passes with r < 0 / r > 0."""

    strong: pd.Series
    passing: pd.Series
    negative: pd.Series
    positive: pd.Series


def _masks(table: pd.DataFrame, criteria: Criteria) -> _Masks:
    r = table["pearson_r"]
    strong = pd.Series(criteria.strong(r), index=table.index)
    passing = pd.Series(criteria.passes(r, table["q_fdr"]), index=table.index)
    return _Masks(strong, passing, passing & (r < 0), passing & (r > 0))


def _counts(m: _Masks, total: int) -> Passing:
    n_pass = int(m.passing.sum())
    return Passing(
        total=n_pass,
        negative=int(m.negative.sum()),
        positive=int(m.positive.sum()),
        share_of_heads=n_pass / total if total else 0.0,
        share_negative=int(m.negative.sum()) / n_pass if n_pass else None,
    )


def _per_layer(table: pd.DataFrame, m: _Masks) -> list[LayerRow]:
    rows = []
    for layer, g in table.groupby("layer", sort=True):
        idx = g.index
        rows.append(
            LayerRow(
                layer=int(layer),
                heads=len(g),
                passing=int(m.passing[idx].sum()),
                negative=int(m.negative[idx].sum()),
                positive=int(m.positive[idx].sum()),
                mean_r=_mean(g["pearson_r"]),
                min_r=finite_or_none(g["pearson_r"].min()),
                max_r=finite_or_none(g["pearson_r"].max()),
            )
        )
    return rows


def _checks(table: pd.DataFrame, m: _Masks, criteria: Criteria, perm_column: str) -> Checks:
    total, n_pass = len(table), int(m.passing.sum())
    min_share, alpha = criteria.min_share, criteria.fdr
    strong_share = float(m.strong.sum()) / total if total else 0.0
    pass_share = n_pass / total if total else 0.0
    perm_mean = _mean(table[perm_column])
    return Checks(
        effect_size=ShareCriterion(
            description=f"|r| >= {criteria.r_threshold} in at least {min_share:.0%} of heads",
            met=bool(strong_share >= min_share and m.strong.any()),
            heads=int(m.strong.sum()),
            share=strong_share,
            required_share=min_share,
        ),
        significance=SignificanceCriterion(
            description=(
                f"those heads have cluster-level BH q < {alpha} (p < {alpha} after correction), "
                f"still at least {min_share:.0%} of heads"
            ),
            met=bool(pass_share >= min_share and n_pass > 0),
            heads=n_pass,
            share=pass_share,
            required_share=min_share,
            strong_heads_not_significant=int((m.strong & ~m.passing).sum()),
            max_q_of_passing=_max(table.loc[m.passing, "q_fdr"]),
        ),
        randomization_control=RandomizationCriterion(
            description=(
                f"mean {perm_column} (‖q‖ permuted within windows) within "
                f"{criteria.perm_tolerance} of 0"
            ),
            met=bool(perm_mean is not None and abs(perm_mean) <= criteria.perm_tolerance),
            column=perm_column,
            mean_perm_r=perm_mean,
            tolerance=criteria.perm_tolerance,
        ),
    )


# (name, over heads, of |r|?) of each permuted-r number in `Controls.randomization`.
RANDOMIZATION_STATS = (("mean", _mean, False), ("mean_abs", _mean, True), ("max_abs", _max, True))


def _controls(table: pd.DataFrame, m: _Masks, criteria: Criteria, control: dict | None) -> Controls:
    r, random_r = table["pearson_r"], table["random_init_r"]
    partial = table["partial_r_position"]
    return Controls(
        randomization={
            f"{stat}_{col}": fn(table[col].abs() if absolute else table[col])
            for col in ("perm_r", "perm_r_within")
            if col in table.columns
            for stat, fn, absolute in RANDOMIZATION_STATS
        },
        random_init=RandomInitControl(
            available=bool(random_r.notna().any()),
            mean_r=_mean(random_r),
            mean_abs_r=_mean(random_r.abs()),
            max_abs_r=_max(random_r.abs()),
            heads_abs_r_ge_threshold=int((random_r.abs() >= criteria.r_threshold).sum()),
            **(control or {}),
        ),
        position=PositionControl(
            mean_abs_r=_mean(r.abs()),
            mean_abs_partial_r=_mean(partial.abs()),
            mean_abs_r_passing=_mean(r[m.passing].abs()),
            mean_abs_partial_r_passing=_mean(partial[m.passing].abs()),
        ),
        within_window=WithinWindowControl(
            mean_abs_r=_mean(r.abs()),
            mean_abs_within_window_r=_mean(table["within_window_r"].abs())
            if "within_window_r" in table.columns
            else None,
        ),
    )


def verdict(
    table: pd.DataFrame,
    criteria: Criteria | None = None,
    *,
    perm_column: str = "perm_r",
    ci_level: float = CI_LEVEL,
    run: RunFacts | None = None,
    control: dict | None = None,
) -> Verdict:
    """Summary of a ``head_table`` against the seed's success criteria.

    A head passes by `criteria` (recomputed here from the table). Criteria:
    - effect_size: |r| >= r_threshold in a meaningful subset of heads, where meaningful means at
      least ``min_share`` (10%) of all heads tested. Why 10%: the point of Phase 1 is a cheap
      predictor an inference engine can use, which pays only if a noticeable share of attention
      is covered; and among hundreds of heads a few outliers (e.g. attention-sink heads) reach
      any threshold without saying anything general about attention.
    - significance: the same subset survives correction: heads with |r| >= r_threshold and
      cluster-level BH q < alpha are at least ``min_share`` of all heads.
    - randomization_control: the mean over heads of r with ‖q‖ permuted within windows
      (``perm_column``) is within ``perm_tolerance`` of 0. The default, pooled ``perm_r``, keeps
      any between-window association (documents differing in both mean ‖q‖ and mean H), so it
      can miss the tolerance on real data without a bug; ``perm_column="perm_r_within"`` is the
      exact null (expectation 0). Both are reported when the table has them.
    The random-init, position and within-window numbers are reported, not criteria.
    Degenerate heads (`stats.degenerate`) are left out of every count, share, mean and median
    and listed under ``degenerate``; `control` (`stats.degenerate.control_usability` of the
    random-init model) says whether that control can serve as one. Raises SpectraError when the
    table lacks a column these need.
    """
    left_out = degenerate_summary(table)
    table = measurable(table)
    criteria = criteria or Criteria()
    need = {"layer", "head", "pearson_r", "q_fdr", perm_column, "random_init_r"}
    need |= {"partial_r_position"}
    missing = need - set(table.columns)
    if missing:
        raise SpectraError(f"The head table lacks columns {sorted(missing)}.")
    masks = _masks(table, criteria)
    checks = _checks(table, masks, criteria, perm_column)
    return Verdict(
        hypothesis=HYPOTHESIS,
        thresholds=criteria,
        heads_total=len(table) + left_out["count"],
        heads_measured=len(table),
        heads_with_r=int(table["pearson_r"].notna().sum()),
        passing=_counts(masks, len(table)),
        per_layer=_per_layer(table, masks),
        controls=_controls(table, masks, criteria, control),
        criteria=checks,
        all_criteria_met=all(c.met for _, c in checks.items()),
        beyond_r=beyond_r(table, criteria, ci_level),
        degenerate=Degenerate(
            count=left_out["count"], heads=[DegenerateHead(**h) for h in left_out["heads"]]
        ),
        run=run,
    )


def beyond_r(table: pd.DataFrame, criteria: Criteria, ci_level: float = CI_LEVEL) -> BeyondR | None:
    """The second question: what ‖q‖ adds beyond position and the softmax's own rescaling. A
    finding, stated with its numbers; None for a table without these columns."""
    if "delta_r2" not in table.columns:
        return None
    lower, upper = table["delta_r2_ci_high"] < 0, table["delta_r2_ci_low"] > 0
    beyond = lower | upper
    share = float(beyond.mean()) if len(table) else 0.0
    ts = table["temperature_share"].dropna()
    quartiles = ts.quantile([0.25, 0.5, 0.75]).tolist() if len(ts) else [None] * 3
    best = table.dropna(subset=["auroc_low_entropy"]).nlargest(BEST_SHOWN, "auroc_low_entropy")
    if share >= criteria.min_share:
        finding = (
            f"‖q‖ explains variance of H beyond position in {int(beyond.sum())} of {len(table)} "
            f"heads ({share:.0%}; {int(lower.sum())} with larger ‖q‖ going with lower H); the "
            f"median |delta R^2| among them is "
            f"{finite_or_none(table.loc[beyond, 'delta_r2'].abs().median()):.3f}."
        )
    else:
        finding = (
            f"‖q‖ adds little beyond position: only {int(beyond.sum())} of {len(table)} heads "
            f"({share:.0%}) have a delta R^2 whose {ci_level:.0%} CI excludes 0."
        )
    return BeyondR(
        question="what does ‖q‖ add beyond position (delta R^2) and beyond rescaling "
        "(temperature share)?",
        delta_r2=DeltaR2(
            heads_ci_excludes_0=int(beyond.sum()),
            heads_ci_below_0=int(lower.sum()),
            heads_ci_above_0=int(upper.sum()),
            share=share,
            median=_finite_or_absent(table["delta_r2"].median()),
            median_abs=_finite_or_absent(table["delta_r2"].abs().median()),
        ),
        temperature_share=TemperatureShare(
            q25=_finite_or_absent(quartiles[0]),
            median=_finite_or_absent(quartiles[1]),
            q75=_finite_or_absent(quartiles[2]),
            heads=int(len(ts)),
        ),
        best_auroc_heads=[
            AurocHead(
                layer=int(row["layer"]),
                head=int(row["head"]),
                auroc_low_entropy=finite_or_none(row["auroc_low_entropy"]),
                pearson_r=finite_or_none(row["pearson_r"]),
                delta_r2=finite_or_none(row["delta_r2"]),
            )
            for _, row in best.iterrows()
        ],
        finding=finding,
    )


def _finite_or_absent(v: float | None) -> float | None:
    return None if v is None else finite_or_none(v)


# --- shaping as text -------------------------------------------------------------------------


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _criterion_line(name: str, crit: ShareCriterion | RandomizationCriterion) -> str:
    mark = "met" if crit.met else "NOT met"
    if isinstance(crit, RandomizationCriterion):
        detail = f"mean perm r = {_fmt(crit.mean_perm_r, '+.4f')}"
    else:
        detail = f"{crit.heads} heads ({crit.share:.1%})"
    return f"  [{mark}] {crit.description}: {detail}"


def _controls_line(ctl: Controls) -> str:
    ri, rnd, ww = ctl.random_init, ctl.randomization, ctl.within_window
    ri_text = (
        f"random-init mean r = {_fmt(ri.mean_r, '+.3f')}, max |r| = {_fmt(ri.max_abs_r)}"
        if ri.available
        else "random-init control not run"
    )
    if ri.usable is False:
        ri_text = f"the random-init model cannot serve as a control: {ri.reason}"
    return (
        f"Controls: perm r mean {_fmt(rnd.get('mean_perm_r'), '+.4f')}, max |.| "
        f"{_fmt(rnd.get('max_abs_perm_r'))} (window means removed: mean "
        f"{_fmt(rnd.get('mean_perm_r_within'), '+.4f')}); {ri_text}; mean |r| = "
        f"{_fmt(ctl.position.mean_abs_r)}, controlling for position "
        f"{_fmt(ctl.position.mean_abs_partial_r)}, within windows "
        f"{_fmt(ww.mean_abs_within_window_r)}."
    )


def _text(summary: Verdict) -> str:
    p = summary.passing
    share_neg = "n/a" if p.share_negative is None else f"{p.share_negative:.0%}"
    n_left = summary.degenerate.count
    left_out = f" ({n_left} degenerate, left out)" if n_left else ""
    lines = [
        f"Heads: {summary.heads_total}{left_out}; passing ({summary.thresholds.describe()}): "
        f"{p.total} ({p.negative} negative, {p.positive} positive; {share_neg} negative).",
        *(_criterion_line(name, crit) for name, crit in summary.criteria.items()),
        _controls_line(summary.controls),
        *degenerate_lines(summary.degenerate),
        "Verdict: all seed criteria met." if summary.all_criteria_met else "Verdict: not met.",
    ]
    extra = summary.beyond_r
    if extra:
        ts = extra.temperature_share
        best = ", ".join(
            f"L{h.layer}H{h.head} {_fmt(h.auroc_low_entropy, '.2f')}"
            for h in extra.best_auroc_heads
        )
        lines += [
            f"Beyond r: {extra.finding}",
            f"  temperature share (observed slope / rescaling gain): median "
            f"{_fmt(ts.median, '.2f')} (quartiles {_fmt(ts.q25, '.2f')} to "
            f"{_fmt(ts.q75, '.2f')}); best AUROC for sharp attention: {best or 'n/a'}.",
        ]
    return "\n".join(lines)


def degenerate_lines(found: Degenerate) -> list[str]:
    """The heads left out as degenerate, as one printable line (none: no line)."""
    if not found.count:
        return []
    shown = found.heads[:DEGENERATE_SHOWN]
    named = ", ".join(f"L{h.layer}H{h.head} ({h.reason})" for h in shown)
    n_more = len(found.heads) - DEGENERATE_SHOWN
    more = f" and {n_more} more" if n_more > 0 else ""
    return [
        f"Degenerate heads left out of every count, median and criterion: {found.count}: "
        f"{named}{more}."
    ]


def interpretation(summary: Verdict) -> list[str]:
    """The run's numbers in a few plain sentences (the story notebook's closing lines)."""
    c = summary.criteria
    met = "all met" if summary.all_criteria_met else "not all met"
    lines = [
        f"Success criteria of the original plan: {met} ({c.effect_size.heads} heads with "
        f"|r| >= {summary.thresholds.r_threshold}, {c.significance.heads} of them significant "
        f"after correction, mean permuted r "
        f"{_fmt(c.randomization_control.mean_perm_r, '+.4f')}).",
    ]
    beyond = summary.beyond_r
    if beyond:
        ts = beyond.temperature_share
        lines += [
            f"Beyond position: {beyond.finding}",
            f"Beyond rescaling: the median temperature share is {_fmt(ts.median, '.2f')} "
            f"(quartiles {_fmt(ts.q25, '.2f')} to {_fmt(ts.q75, '.2f')}); 1 would mean the "
            "observed dependence of H on ‖q‖ is what rescaling the query alone produces.",
        ]
    return lines
