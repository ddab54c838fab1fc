"""The settings of a run, declared once: every command-line flag, TOML key, preset entry, resume
identity and SageMaker hyperparameter is derived from these dataclasses (see settings.py).

`RunConfig` holds what every experiment shares (model, corpus, windows, device, output);
`SweepConfig` adds Phase 1's extraction and statistics, with the pass rule as a group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from spectra_interp.errors import SpectraError
from spectra_interp.settings import (
    check_all,
    comma_list,
    flat_values,
    float_list,
    identity,
    non_negative_int,
    one_of,
    open_fraction,
    optional_int,
    optional_positive_int,
    positive_floats,
    positive_int,
    setting,
    subset_of,
)
from spectra_interp.stats.criteria import Criteria

CONTROLS = ("randomization", "random-init", "position")


@dataclass(frozen=True)
class Method:
    """An extraction method (`--method`): its name, its implementation (`module:function` with
    the signature of `spectra_interp.extract.MethodRun`) and what says where it reads ‖q‖
    (`module:function(model, spec)` for config.json), imported only when used, so the settings
    stay importable without torch."""

    name: str
    run: str
    q_source: str


_EXTRACT = "spectra_interp.extract"
# The extraction methods, the default first: the one registry (flag choices, dispatch, docs).
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fused", f"{_EXTRACT}:fused_run", f"{_EXTRACT}:argument_source"),
        Method("stream", f"{_EXTRACT}.hooked:stream", f"{_EXTRACT}:hook_source"),
        Method("cache", f"{_EXTRACT}.hooked:cache", f"{_EXTRACT}:hook_source"),
    )
}
DEFAULT_METHOD = next(iter(METHODS))
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICE_MAPS = ("auto", "balanced", "sequential", "cpu")
MIN_CTX = 8
# The alpha-response: H with the query scaled by these factors (no extra forward pass).
Q_SCALES = (0.5, 2**-0.5, 1.0, 2**0.5, 2.0)


def _q_scales(flag: str, value: Any) -> None:
    positive_floats(flag, value)
    if 1.0 not in value:
        raise SpectraError(f"{flag} must include 1 (the model as it is); got {list(value)}.")


def _ctx(flag: str, value: Any) -> None:
    positive_int(flag, value)
    if value < MIN_CTX:
        raise SpectraError(f"{flag} must be at least {MIN_CTX} tokens; got {value}.")


def _device_map(flag: str, value: Any) -> None:
    if value is not None:
        one_of(DEVICE_MAPS)(flag, value)


@dataclass(frozen=True)
class RunConfig:
    """What every experiment shares. The defaults are the offline default: SmolLM2-135M on the
    CPU over the bundled books."""

    OUT_PREFIX: ClassVar[str] = ""

    model: str = setting(
        "smollm2-135m", "alias, Hugging Face id, local folder, .gguf or random:<source>"
    )
    corpus: str = setting(
        "bundled",
        "bundled, stdlib-code, a path (file or folder), hf:<name>[:<config>]:<split>"
        "[:<column>]; combine with commas",
    )
    ctx: int = setting(1536, "tokens per window", check=_ctx)
    stride: int | None = setting(
        None, "tokens between window starts", check=optional_positive_int, parse=optional_int,
        shown_default="ctx, no overlap",
    )  # fmt: skip
    max_windows: int | None = setting(
        16, "windows to sample with the seed (none: all)", check=optional_positive_int,
        parse=optional_int,
    )  # fmt: skip
    pack: bool = setting(False, "pack documents shorter than ctx")
    batch_size: int = setting(1, "windows per forward pass", check=positive_int)
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:N", identity=False)
    device_map: str | None = setting(
        None, "spread a model too large for one GPU over all GPUs (auto); not with torchrun",
        check=_device_map, identity=False, shown_default="off",
    )  # fmt: skip
    dtype: str = setting(
        "auto", "auto is float16 on CUDA, float32 on CPU", check=one_of(DTYPES), choices=DTYPES
    )
    seed: int = setting(
        0, "window choice, permutations, bootstrap, random init", check=non_negative_int
    )
    out: str | None = setting(
        None, "results folder", identity=False, shown_default="results/<model>-ctx<ctx>"
    )
    overwrite: bool = setting(
        False, "replace a results folder made with other settings", identity=False
    )
    report: bool = setting(True, "write report.html at the end", identity=False)
    progress: bool = setting(True, "show a progress bar", identity=False)

    def __post_init__(self) -> None:
        check_all(self)

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out).expanduser()
        return Path("results") / self.folder_name(self.model, self.ctx)

    @classmethod
    def folder_name(cls, model: str, ctx: int | str) -> str:
        """The default results folder's name for a model and context (`*` for any context)."""
        name = Path(model.replace("/", "_").replace(":", "-")).name
        return f"{cls.OUT_PREFIX}{name}-ctx{ctx}"

    def identity(self) -> dict[str, Any]:
        """The settings that determine the numbers, as JSON-ready values."""
        return identity(self)

    def to_dict(self) -> dict[str, Any]:
        return {**flat_values(self), "out": str(self.out_dir)}


@dataclass(frozen=True)
class SweepConfig(RunConfig):
    """One Phase 1 run.

    `ctx=1536, max_windows=16`: the trained and random-init passes over 16 windows of 1536 tokens
    finish inside 10 minutes on a 2-core CPU (2048 took 11); the headline run uses 4096.
    `skip_first=1` leaves out only position 0, whose entropy is 0 by construction (one key);
    the position confound is handled by the partial correlation and the normalised entropy
    rather than by discarding more tokens.
    """

    method: str = setting(
        DEFAULT_METHOD, "how ‖q‖ and H are read (see README: Extraction)",
        check=one_of(tuple(METHODS)), choices=tuple(METHODS),
    )  # fmt: skip
    layers_per_pass: int = setting(
        4, "layers cached per forward with --method cache", check=positive_int
    )
    skip_first: int = setting(1, "positions left out at the start of each window")
    controls: tuple[str, ...] = setting(
        CONTROLS, f"comma-separated subset of {','.join(CONTROLS)}, or all / none",
        check=subset_of(CONTROLS), parse=lambda text: comma_list(text, CONTROLS),
        shown_default="all",
    )  # fmt: skip
    sample_per_window: int = setting(
        256,
        "queries per window in the token sample (rank, span and temperature statistics, plots)",
        check=positive_int,
    )
    n_boot: int = setting(1000, "cluster bootstrap resamples", check=positive_int)
    keff_mass: float = setting(
        0.9, "k_eff counts the fewest keys holding this share of a query's attention",
        check=open_fraction,
    )  # fmt: skip
    q_scales: tuple[float, ...] = setting(
        Q_SCALES, "factors alpha the query is scaled by for the alpha-response (include 1)",
        check=_q_scales, parse=float_list, shown_default="0.5,1/sqrt2,1,sqrt2,2",
    )  # fmt: skip
    attention_slices: int = setting(
        3, "windows (spread over the run) whose attention is kept for the views",
        check=positive_int, identity=False,
    )  # fmt: skip
    attention_tokens: int = setting(
        48, "tokens per kept slice, taken from the middle of its window (where every query "
        "already sees many keys)", check=positive_int, identity=False,
    )  # fmt: skip
    random_init_norms: bool = setting(
        False, "the random-init control also draws its norm weights, so a QK-norm model's ‖q‖ "
        "is not constant by construction (see README: Degenerate heads)",
    )  # fmt: skip
    criteria: Criteria = setting(default_factory=Criteria)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.skip_first, int) or not 1 <= self.skip_first < self.ctx - 2:
            raise SpectraError(
                f"--skip-first must be between 1 and ctx - 3 (position 0 always has H = 0); "
                f"got {self.skip_first}."
            )
        if self.device_map and "random-init" in self.controls:
            raise SpectraError(
                "The random-init control builds its model on one device; with --device-map use "
                "--controls randomization,position and run random:<model> separately where it "
                "fits."
            )


# --- Phase 2: key budgets from ‖q‖ -----------------------------------------------------------

BUDGETS = (0.2, 0.35)
# What the allocator minimises per query (budget.probes).
LOSSES = ("mass", "output")
# Every arm's achieved mean budget must lie within this of its target.
BUDGET_TOLERANCE = 0.02


def _budgets(flag: str, value: Any) -> None:
    if not value or any(
        not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v <= 1 for v in value
    ):
        raise SpectraError(f"{flag} must be a comma-separated list of fractions in (0, 1].")
    if len(set(value)) != len(value):
        raise SpectraError(f"{flag} lists a budget twice: {list(value)}.")


@dataclass(frozen=True)
class BudgetConfig(RunConfig):
    """One Phase 2 run: can ‖q‖ set each query's key budget better than its head and position?

    The offline default (SmolLM2-135M, 2 CPU cores, inside 10 minutes): ctx 256 and budgets 0.2,
    0.35, so that 24 evaluation windows, each from its own document, fit beside 16 calibration
    windows (19 forwards per evaluation window, about 23 CPU-seconds per window on one thread; see
    the README); the corpus is the bundled books and the pinned standard-library modules
    (`budget.data.PINNED_STDLIB`), each file its own document. `skip_first=16`: the first queries
    see so few keys that the always-kept sink and recent keys are most of them; every arm is nearly
    dense there, so they would only dilute the comparison (they attend to every visible key in every
    arm and are not evaluated). `position_cells=8, feature_cells=4` are fixed, not cross-validated:
    8 bins of log(keys seen) follow the span's growth with position at every ctx used here, and 4
    quantile bins of a residual leave each (head, position) cell about (windows x 240 / 32)
    calibration queries (about 120 in the default) before the shrinkage towards the parent cell,
    which takes over where a cell is sparse.
    """

    OUT_PREFIX: ClassVar[str] = "adaptive-"

    corpus: str = setting(
        "bundled,stdlib-code",
        "as for the sweep; stdlib-code here keeps the pinned modules only (budget.data)",
    )
    ctx: int = setting(256, "tokens per window", check=_ctx)
    max_windows: int | None = setting(
        24, "evaluation windows to sample with the seed, spread across documents (none: all)",
        check=optional_positive_int, parse=optional_int,
    )  # fmt: skip
    calibration_windows: int | None = setting(
        16, "calibration windows to sample with the seed (none: all)",
        check=optional_positive_int, parse=optional_int,
    )  # fmt: skip
    calibration_share: float = setting(
        0.5, "share of the documents (drawn with the seed) whose windows fit the allocation; "
        "the other documents evaluate it", check=open_fraction,
    )  # fmt: skip
    budgets: tuple[float, ...] = setting(
        BUDGETS, "mean fractions of the visible keys kept, one masked forward per arm and budget",
        check=_budgets, parse=float_list,
    )  # fmt: skip
    sink: int = setting(1, "first tokens of the window every arm keeps", check=non_negative_int)
    recent: int = setting(
        4, "most recent keys (the query's own included) every arm keeps (a local window; not "
        "--local, which torchrun would take for one of its own options)", check=non_negative_int,
    )  # fmt: skip
    skip_first: int = setting(
        16, "positions at the start of each window that keep every key and are not evaluated"
    )
    loss: str = setting(
        "mass", "what the allocator minimises per query: the attention mass outside the kept "
        "keys (mass) or the relative error of the attention output (output)",
        check=one_of(LOSSES), choices=LOSSES,
    )  # fmt: skip
    position_cells: int = setting(
        8, "bins of log(keys seen) that split each head's queries into cells", check=positive_int
    )
    feature_cells: int = setting(
        4, "quantile bins of the ‖q‖ (or entropy) residual that split each head-and-position "
        "cell (1: qnorm is head_position)", check=positive_int,
    )  # fmt: skip
    n_boot: int = setting(1000, "document bootstrap resamples", check=positive_int)
    alpha: float = setting(
        0.05, "the ratio's interval is two-sided at 1 - 2·alpha; one-sided test level",
        check=open_fraction,
    )  # fmt: skip
    margin: float = setting(
        0.1, "equivalence margin of the KL ratio qnorm / head_position: an interval inside "
        "[1 - margin, 1 + margin] is no useful effect", check=open_fraction,
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.skip_first, int) or not 0 <= self.skip_first <= self.ctx - 2:
            raise SpectraError(
                f"--skip-first must be between 0 and ctx - 2 (at least one evaluated token with "
                f"a next token); got {self.skip_first}."
            )
