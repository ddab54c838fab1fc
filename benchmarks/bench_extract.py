"""Extraction cost against the model's own forward pass: time side by side in one process,
peak memory each configuration in its own process; a table on stdout and in RESULTS.md.

Configurations (the same weights, the same tokens, every forward stopped before the logits):
- sdpa:   the wrapped transformers model with SDPA attention (the floor: what the model costs);
- eager:  the same with eager attention (a second reference: it materialises every pattern);
- fused:  `extract(model, tokens)`, the default method (‖q‖ and H for every token);
- stream: TransformerLens hooks reducing hook_q and hook_pattern on the fly;
- cache:  run_with_cache over groups of --layers-per-pass layers;
- sweep:  the whole default sweep (`spectra sweep`, every default statistic, the trained pass
          only), per window: the difference of the wall times of sweeps of --sweep-windows
          (e.g. 3 and 6) windows, divided by the difference of their window counts, so loading,
          start-up and the final statistics cancel. Each sweep is its own process (no peak).

Times are medians of --repeats rounds after a warm-up, the configurations interleaved inside each
round, so a shared, noisy machine slows them alike. Peak memory: on the CPU the process's peak
resident set during one forward (the kernel's high-water mark is reset after loading), on CUDA
torch.cuda.max_memory_allocated.

    python benchmarks/bench_extract.py                                # SmolLM2, fp32, CPU
    python benchmarks/bench_extract.py --device cuda --model random:llama-3-8b --dtype float16 \\
        --ctx 4096 --configs sdpa,fused,stream
    python benchmarks/bench_extract.py --ctx 1536,4096 --configs sdpa,fused,sweep --no-memory
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = ("sdpa", "eager", "fused", "stream", "cache", "sweep")
IN_PROCESS = CONFIGS[:-1]
FLOOR = "sdpa"
RESULTS = Path(__file__).with_name("RESULTS.md")


def runners(model, tokens, layers_per_pass: int) -> dict:
    """One zero-argument callable per configuration."""
    import torch

    from spectra_interp.extract import extract
    from spectra_interp.models.attention import attention_implementation, unbridged

    def plain(implementation: str):
        def run() -> None:
            with unbridged(model) as hf, attention_implementation(hf, implementation):
                with torch.inference_mode():
                    hf.base_model(input_ids=tokens, use_cache=False)

        return run

    return {
        "sdpa": plain("sdpa"),
        "eager": plain("eager"),
        "fused": lambda: extract(model, tokens, method="fused"),
        "stream": lambda: extract(model, tokens, method="stream"),
        "cache": lambda: extract(model, tokens, method="cache", layers_per_pass=layers_per_pass),
    }


def sweep_seconds(args: argparse.Namespace, ctx: int, n_windows: int, out: Path) -> float:
    """Wall time of one `spectra sweep` of n_windows windows (trained pass, default statistics)."""
    cmd = [sys.executable, "-m", "spectra_interp.cli", "sweep",
           "--model", args.sweep_model or args.model,
           "--device", args.device, "--dtype", args.dtype, "--ctx", str(ctx),
           "--max-windows", str(n_windows), "--controls", "randomization,position",
           "--out", str(out), "--overwrite", "--no-report", "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"sweep failed: {done.stderr.strip()[-2000:]}")
    return seconds


def sweep_per_window(args: argparse.Namespace, ctx: int) -> float:
    """Marginal seconds per window of the default sweep: (t(n2) - t(n1)) / (n2 - n1)."""
    import tempfile

    n1, n2 = args.sweep_windows  # checked by main (check_sweep_windows)
    with tempfile.TemporaryDirectory() as tmp:
        t1 = sweep_seconds(args, ctx, n1, Path(tmp) / "small")
        t2 = sweep_seconds(args, ctx, n2, Path(tmp) / "large")
    return (t2 - t1) / (n2 - n1)


def check_sweep_windows(n1: int, n2: int) -> None:
    """Both sweeps must keep the same number of attention slices (a per-run cost: a hooked
    forward of each of the first `attention_slices` windows), or their difference counts it."""
    from spectra_interp.config import SweepConfig

    slices = SweepConfig().attention_slices
    if not slices <= n1 < n2:
        raise SystemExit(
            f"--sweep-windows needs {slices} <= n1 < n2 (a sweep keeps attention slices of "
            f"min(windows, {slices}) windows, a cost per run, not per window); got {n1},{n2}."
        )


def load(args: argparse.Namespace, ctx: int):
    import torch

    from spectra_interp.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype, seed=0)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(100, int(model.cfg.d_vocab) - 1, (1, ctx), generator=gen)
    return model, tokens.to(model.cfg.device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_side_by_side(args: argparse.Namespace, ctx: int) -> dict[str, list[float]]:
    """Interleaved rounds of every configuration in this process."""
    model, tokens = load(args, ctx)
    run = runners(model, tokens, args.layers_per_pass)
    in_process = [name for name in args.configs if name in IN_PROCESS]
    for name in in_process:
        run[name]()
        synchronize(args.device)
    times: dict[str, list[float]] = {name: [] for name in args.configs}
    for _ in range(args.repeats):
        for name in args.configs:
            if name == "sweep":
                times[name].append(sweep_per_window(args, ctx))
                continue
            start = time.perf_counter()
            run[name]()
            synchronize(args.device)
            times[name].append(time.perf_counter() - start)
        print(json.dumps({"ctx": ctx, "round": {k: v[-1] for k, v in times.items()}}), flush=True)
    return times


def _rss_peak_gib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 2**20


def peak_memory(args: argparse.Namespace) -> dict:
    """Child process: load, warm up, reset the high-water mark, run once, report the peak."""
    import torch

    model, tokens = load(args, args.ctx)
    run = runners(model, tokens, args.layers_per_pass)[args.config]
    run()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return {"peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    Path("/proc/self/clear_refs").write_text("5")
    run()
    return {"peak_gib": _rss_peak_gib()}


def memory_in_child(args: argparse.Namespace, config: str, ctx: int) -> float | str:
    cmd = [sys.executable, __file__, "--child", config, "--ctx", str(ctx), "--model", args.model,
           "--device", args.device, "--dtype", args.dtype,
           "--layers-per-pass", str(args.layers_per_pass)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_gib"]


def table(args: argparse.Namespace, rows: dict[int, dict]) -> str:
    lines = [
        f"| ctx | configuration | median s | time / {FLOOR} | peak GiB | peak / {FLOOR} "
        "| tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for ctx, row in rows.items():
        floor = statistics.median(row["times"][FLOOR]) if FLOOR in row["times"] else None
        peak_floor = row["peaks"].get(FLOOR)
        for name in args.configs:
            t = statistics.median(row["times"][name])
            peak = row["peaks"].get(name)
            t_ratio = f"{t / floor:.2f}" if floor else "n/a"
            if isinstance(peak, float) and isinstance(peak_floor, float):
                peak_text, m_ratio = f"{peak:.2f}", f"{peak / peak_floor:.2f}"
            else:
                peak_text, m_ratio = str(peak or "n/a"), "n/a"
            lines.append(
                f"| {ctx} | {name} | {t:.3f} | {t_ratio} | {peak_text} | {m_ratio} | "
                f"{ctx / t:,.0f} |"
            )
    return "\n".join(lines)


def header(args: argparse.Namespace) -> str:
    import torch
    import transformers

    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(0)})"
    cpu = platform.processor() or platform.machine()
    return (
        f"## {args.model}, {args.dtype}, {device}\n\n"
        f"{datetime.date.today()} · {cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
        f"torch threads · torch {torch.__version__}, transformers {transformers.__version__} · "
        f"time: median of {args.repeats} interleaved rounds after a warm-up, all configurations "
        "in one process (sweep: seconds per window, the marginal cost between sweeps of "
        f"{' and '.join(map(str, args.sweep_windows))} windows, each its own process); memory: "
        "each configuration in its own process\n\n"
        f"Command: `python benchmarks/bench_extract.py {' '.join(sys.argv[1:])}`\n"
    )


def write_section(text: str, key: str) -> None:
    """Replace this setup's section of RESULTS.md (one section per model/dtype/device)."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    old = RESULTS.read_text() if RESULTS.exists() else "# Extraction benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--ctx", default="1024,2048,4096", help="comma-separated lengths")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers-per-pass", type=int, default=4)
    p.add_argument("--no-memory", action="store_true", help="skip the per-process memory runs")
    p.add_argument(
        "--sweep-windows",
        default="3,6",
        help="the two window counts of the sweep configuration (both at least the sweep's "
        "attention slices)",
    )
    p.add_argument(
        "--sweep-model",
        help="the sweep's model where --model has no tokenizer offline (the same architecture "
        "and seed, e.g. random:<architecture folder with a tokenizer>)",
    )
    p.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        args.config, args.ctx = args.child, int(args.ctx)
        print(json.dumps(peak_memory(args)))
        return
    args.configs = args.configs.split(",")
    args.sweep_windows = tuple(int(n) for n in args.sweep_windows.split(","))
    if "sweep" in args.configs:
        check_sweep_windows(*args.sweep_windows)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configurations {sorted(unknown)}; choose from {CONFIGS}")
    rows: dict[int, dict] = {}
    for ctx in [int(c) for c in args.ctx.split(",")]:
        rows[ctx] = {"times": time_side_by_side(args, ctx), "peaks": {}}
        if not args.no_memory:
            for name in [c for c in args.configs if c in IN_PROCESS]:
                rows[ctx]["peaks"][name] = memory_in_child(args, name, ctx)
                print(json.dumps({"ctx": ctx, name: rows[ctx]["peaks"][name]}), flush=True)
    text = header(args) + "\n" + table(args, rows) + "\n"
    print(text)
    if not args.no_write:
        key = f"{args.model}-{args.dtype}-{args.device.split(':')[0]}-{args.ctx}"
        write_section(text, key)


if __name__ == "__main__":
    main()
