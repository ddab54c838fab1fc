"""Command line: `spectra sweep|experiment|visualize` and `python scripts/sweep_heads.py`.

Settings come from the SweepConfig defaults, then a `--config` TOML file, then the flags.
Bad input ends with one sentence on stderr and exit code 2, before any long work.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from spectra_interp.config import CONTROLS, DTYPES, METHODS, SweepConfig, parse_controls, read_toml
from spectra_interp.errors import SpectraError

# The seed's Phase 1 protocol: Llama-3-8B, fp16, 4096-token windows, batch 1, CUDA, all controls.
EXPERIMENT_PRESET = {
    "model": "llama-3-8b",
    "ctx": 4096,
    "batch_size": 1,
    "dtype": "float16",
    "device": "cuda",
    "max_windows": 64,
    "controls": CONTROLS,
}
OFFLINE_COMMAND = "python scripts/sweep_heads.py"


def sweep_parser(prog: str = "sweep_heads.py") -> argparse.ArgumentParser:
    d = SweepConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Per-head correlation between query norm ‖q‖ and attention entropy H. With "
        "no arguments: SmolLM2-135M on the CPU over the bundled books, all controls.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--model", help=f"alias, HF id, local folder, .gguf or random:<source> [{d.model}]"
    )
    p.add_argument(
        "--corpus",
        help="bundled, stdlib-code, a path (file or folder), hf:<name>[:<config>]:<split>"
        f"[:<column>]; combine with commas [{d.corpus}]",
    )
    p.add_argument("--ctx", type=int, help=f"tokens per window [{d.ctx}]")
    p.add_argument("--stride", type=int, help="tokens between window starts [ctx, no overlap]")
    p.add_argument(
        "--max-windows", type=int, help=f"windows to sample with the seed [{d.max_windows}]"
    )
    p.add_argument("--pack", action="store_true", help="pack documents shorter than ctx")
    p.add_argument("--batch-size", type=int, help=f"windows per forward pass [{d.batch_size}]")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N [auto]")
    p.add_argument(
        "--device-map",
        help="spread a model too large for one GPU over all GPUs (auto); not with torchrun",
    )
    p.add_argument("--dtype", choices=DTYPES, help="auto is float16 on CUDA, float32 on CPU")
    p.add_argument(
        "--method",
        choices=METHODS,
        help=f"hooks that reduce on the fly, or run_with_cache [{d.method}]",
    )
    p.add_argument(
        "--layers-per-pass",
        type=int,
        help=f"layers cached per forward with --method cache [{d.layers_per_pass}]",
    )
    p.add_argument(
        "--skip-first",
        type=int,
        help=f"positions left out at the start of each window [{d.skip_first}]",
    )
    p.add_argument(
        "--controls",
        help=f"comma-separated subset of {','.join(CONTROLS)}, or all / none [all]",
    )
    p.add_argument(
        "--seed", type=int, help=f"window choice, permutations, bootstrap, random init [{d.seed}]"
    )
    p.add_argument(
        "--sample-per-window",
        type=int,
        help=f"tokens per window kept for Spearman and plots [{d.sample_per_window}]",
    )
    p.add_argument("--n-boot", type=int, help=f"cluster bootstrap resamples [{d.n_boot}]")
    p.add_argument("--out", help="results folder [results/<model>-ctx<ctx>]")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a results folder of other settings"
    )
    p.add_argument("--no-report", dest="report", action="store_false", help="skip report.html")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--config", help="TOML file of settings; flags override it")
    return p


def config_from_args(args: argparse.Namespace, preset: dict[str, Any] | None = None) -> SweepConfig:
    values: dict[str, Any] = dict(preset or {})
    given = vars(args)
    if "config" in given:
        values.update(read_toml(given["config"]))
    known = {f.name for f in fields(SweepConfig)}
    for key, value in given.items():
        if key in known:
            values[key] = parse_controls(value) if key == "controls" else value
    return SweepConfig(**values)


def run_sweep_command(
    argv: Sequence[str], preset: dict[str, Any] | None = None, prog: str = "sweep_heads.py"
) -> int:
    args = sweep_parser(prog).parse_args(argv)
    config = config_from_args(args, preset)
    if preset is not None:
        check_experiment_ready(config)
    from spectra_interp.sweep import run_sweep

    run_sweep(config, progress=vars(args).get("progress", True))
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


def visualize_command(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="visualize.py", description="Rebuild report.html from a results folder alone."
    )
    p.add_argument("results_dir")
    args = p.parse_args(argv)
    from spectra_interp.viz.report import build_report

    print(f"Report: {build_report(args.results_dir)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`spectra [sweep] FLAGS`, `spectra experiment FLAGS`, `spectra visualize DIR`.

    Without a subcommand the arguments are the sweep's (as for scripts/sweep_heads.py).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "sweep": lambda rest: run_sweep_command(rest, prog="spectra sweep"),
        "experiment": lambda rest: run_sweep_command(rest, EXPERIMENT_PRESET, "spectra experiment"),
        "visualize": visualize_command,
    }
    if argv and argv[0] in commands:
        return guarded(lambda: commands[argv[0]](argv[1:]))
    return guarded(lambda: run_sweep_command(argv))


def guarded(run: Any) -> int:
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
