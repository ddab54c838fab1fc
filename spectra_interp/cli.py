"""The command line, generated from the settings dataclasses: `spectra sweep|experiment|visualize`.

Settings come from the dataclass defaults, then a `--preset`, then a `--config` TOML file, then
the flags. Bad input ends with one sentence on stderr and exit code 2, before any long work.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectra_interp import settings
from spectra_interp.config import BudgetConfig, SweepConfig
from spectra_interp.errors import SpectraError

OFFLINE_COMMAND = "python scripts/sweep_heads.py"
PHASE1_PRESET = "phase1-llama-3-8b"


def settings_parser(cls: type, prog: str, description: str) -> settings.Parser:
    """A parser with one option per setting of `cls`, plus --config and --preset."""
    parser = settings.Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    settings.add_arguments(parser, cls)
    parser.add_argument("--config", help="TOML file of settings; flags override it")
    parser.add_argument(
        "--preset", help=f"a packaged preset ({', '.join(settings.preset_names())}); "
        "the TOML file and flags override it",
    )  # fmt: skip
    return parser


def config_from_argv(
    cls: type, argv: Sequence[str], prog: str, description: str = "", preset: str | None = None
) -> Any:
    """Parse `argv` into a validated settings object of `cls` (SpectraError on bad input)."""
    args = settings_parser(cls, prog, description).parse_args(list(argv))
    given = vars(args)
    return settings.resolve(
        cls,
        settings.given(args, cls),
        config_file=given.get("config"),
        preset=given.get("preset", preset),
    )


SWEEP_HELP = (
    "Per-head correlation between query norm ‖q‖ and attention entropy H. With no arguments: "
    "SmolLM2-135M on the CPU over the bundled books, all controls."
)


def sweep_command(argv: Sequence[str], prog: str = "spectra sweep") -> int:
    from spectra_interp.sweep import run_sweep

    config = config_from_argv(SweepConfig, argv, prog, SWEEP_HELP)
    report_after(config, run_sweep(config))
    return 0


def report_after(config: SweepConfig | BudgetConfig, results_dir: Path) -> None:
    """The run's report, built from its finished folder by the process that merged it (rank 0),
    unless --no-report."""
    from spectra_interp.distributed import is_main_process

    if config.report and is_main_process():
        print(f"Report: {build_report(results_dir)}")


def build_report(results_dir: str | Path) -> Path:
    """report.html of a finished folder, Phase 1 or Phase 2."""
    from spectra_interp.results.layout import BudgetLayout

    if BudgetLayout.holds(results_dir):
        from spectra_interp.viz.budget_report import build_budget_report

        return build_budget_report(results_dir)
    from spectra_interp.viz.report import build_report as build_sweep_report

    return build_sweep_report(results_dir)


def experiment_command(argv: Sequence[str], prog: str = "spectra experiment") -> int:
    """The Phase 1 protocol preset; without CUDA or the weights it says so in one sentence."""
    from spectra_interp.sweep import run_sweep

    config = config_from_argv(SweepConfig, argv, prog, SWEEP_HELP, preset=PHASE1_PRESET)
    check_experiment_ready(config)
    report_after(config, run_sweep(config))
    return 0


def check_experiment_ready(config: SweepConfig) -> None:
    """The headline preset needs CUDA and the Llama-3 weights; say so in one sentence."""
    import torch

    from spectra_interp import models

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise SpectraError(
            f"The Phase 1 experiment needs a CUDA GPU and none is available; the offline run "
            f"is: {OFFLINE_COMMAND}"
        )
    try:
        models.load_config(config.model)
    except SpectraError as err:
        raise SpectraError(
            f"The weights of {config.model} cannot be had here ({err}); the offline run is: "
            f"{OFFLINE_COMMAND}"
        ) from err


def visualize_command(argv: Sequence[str], prog: str = "spectra visualize") -> int:
    parser = settings.Parser(
        prog=prog, description="Rebuild report.html from a results folder alone (no model)."
    )
    parser.add_argument(
        "results_dir", help="a results folder written by a sweep (or by `spectra budget`)"
    )
    args = parser.parse_args(list(argv))
    print(f"Report: {build_report(args.results_dir)}")
    return 0


def compare_command(argv: Sequence[str], prog: str = "spectra compare") -> int:
    parser = settings.Parser(
        prog=prog,
        description="Put finished results folders side by side in one self-contained page "
        "(sweeps, and Phase 2 folders shown with the sweep of their model); no model is loaded.",
    )
    parser.add_argument(
        "results_dirs", nargs="+", metavar="RESULTS_DIR", help="a finished sweep or Phase 2 folder"
    )
    parser.add_argument("--out", default="compare.html", help="the page to write")
    args = parser.parse_args(list(argv))
    from spectra_interp.viz.compare import build_compare

    print(f"Comparison: {build_compare(args.results_dirs, args.out)}")
    return 0


BUDGET_HELP = (
    "Phase 2: can ‖q‖ set each query's key budget better than its head and position, at matched "
    "mean budgets? With no arguments: SmolLM2-135M on the CPU over the bundled books and the "
    "pinned standard-library modules, allocated on half the documents and evaluated on the other "
    "half."
)


def budget_command(argv: Sequence[str], prog: str = "spectra budget") -> int:
    from spectra_interp.budget import run_budget

    config = config_from_argv(BudgetConfig, argv, prog, BUDGET_HELP)
    report_after(config, run_budget(config))
    return 0


def doctor_command(argv: Sequence[str], prog: str = "spectra doctor") -> int:
    parser = settings.Parser(
        prog=prog,
        description="What this machine has for Spectra, one line per item; exit 0 when the "
        "offline default can run.",
    )
    parser.parse_args(list(argv))
    from spectra_interp import doctor

    return doctor.run()


@dataclass(frozen=True)
class Command:
    run: Callable[[Sequence[str], str], int]
    help: str


COMMANDS: dict[str, Command] = {
    "sweep": Command(sweep_command, "run (or resume) the Phase 1 sweep [default]"),
    "experiment": Command(
        experiment_command, f"the sweep with the {PHASE1_PRESET} preset (CUDA, weights)"
    ),
    "visualize": Command(visualize_command, "rebuild report.html from a results folder"),
    "budget": Command(
        budget_command, "Phase 2: ‖q‖ as each query's key budget against head and position"
    ),
    "compare": Command(compare_command, "put several results folders side by side"),
    "doctor": Command(doctor_command, "check this machine: torch, CUDA, models, hub, token"),
}


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectra",
        description="Spectra: does the L2 norm of a query vector predict its attention entropy? "
        "Without a command the arguments are the sweep's.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`spectra [COMMAND] ARGS`; see `spectra --help`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        main_parser().print_help()
        return 0
    name = argv[0] if argv and argv[0] in COMMANDS else "sweep"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    return guarded(lambda: COMMANDS[name].run(rest, f"spectra {name}"))


def script_main(command: str, prog: str) -> int:
    """Entry of `scripts/<prog>`: one command with the script's name in its usage line."""
    return guarded(lambda: COMMANDS[command].run(sys.argv[1:], prog))


def guarded(run: Callable[[], int]) -> int:
    """Run a command; user errors become one line on stderr and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return run()
    except SpectraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "Interrupted: completed windows are saved; run the same command to resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
