"""Extraction cost against a bare forward pass: wall time, peak memory, tokens/s, ratios.

Each (configuration, context length) runs in its own process so that one peak does not
inflate the next. Configurations:
- bare:        model(tokens), no hooks, logits computed (what a user's forward costs);
- bare-trunk:  the same forward stopped after the last block (no unembedding), no hooks:
               the floor for anything that needs only attention statistics;
- stream-naive: the same hooks with the textbook entropy -(xlogy(p, p)).sum(-1) over the full
               square pattern (the "before" of the blocked causal entropy);
- stream:      Spectra's default (hooks reduce hook_q and hook_pattern on the fly);
- cache-all:   run_with_cache of every layer's hook_q and hook_pattern in one pass (naive);
- cache-group: run_with_cache over groups of --layers-per-pass layers.
A configuration whose estimated peak memory exceeds what the machine has is skipped and its
estimate printed. The table goes to stdout and into a section of benchmarks/RESULTS.md.

    python benchmarks/bench_extract.py                       # SmolLM2, fp32, CPU, 1024/2048/4096
    python benchmarks/bench_extract.py --device cuda --model random:llama-3-8b \
        --dtype float16 --ctx 4096 --configs bare,bare-trunk,stream
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = ("bare", "bare-trunk", "stream-naive", "stream", "cache-all", "cache-group")
RESULTS = Path(__file__).with_name("RESULTS.md")


def measure(args: argparse.Namespace) -> dict:
    """Child process: load, warm up, time `repeats` runs of one configuration at one length."""
    import torch

    from spectra_interp.extract import extract
    from spectra_interp.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype, seed=0)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(100, int(model.cfg.d_vocab) - 1, (1, args.ctx), generator=gen)
    tokens = tokens.to(model.cfg.device)
    cuda = model.cfg.device is not None and str(model.cfg.device).startswith("cuda")
    n_layers = model.cfg.n_layers

    kept: list = []

    def naive_entropy(pattern, hook):
        kept.append(-(torch.xlogy(pattern.float(), pattern.float())).sum(-1).cpu())

    def naive_norm(q, hook):
        kept.append(q.float().norm(dim=-1).cpu())

    naive_hooks = [(f"blocks.{i}.attn.hook_pattern", naive_entropy) for i in range(n_layers)]
    naive_hooks += [(f"blocks.{i}.attn.hook_q", naive_norm) for i in range(n_layers)]

    def once() -> None:
        kept.clear()
        with torch.inference_mode():
            if args.config == "bare":
                model(tokens)
            elif args.config == "bare-trunk":
                model.run_with_hooks(tokens, fwd_hooks=[], stop_at_layer=n_layers, return_type=None)
            elif args.config == "stream":
                extract(model, tokens, method="stream")
            elif args.config == "stream-naive":
                model.run_with_hooks(
                    tokens, fwd_hooks=naive_hooks, stop_at_layer=n_layers, return_type=None
                )
            elif args.config == "cache-all":
                extract(model, tokens, method="cache", layers_per_pass=n_layers)
            else:
                extract(model, tokens, method="cache", layers_per_pass=args.layers_per_pass)
        if cuda:
            torch.cuda.synchronize()

    once()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {"median_s": statistics.median(times), "times": times, "peak_gib": peak}


def estimate_gib(
    model: str, config: str, ctx: int, layers_per_pass: int, dtype_bytes: int
) -> float:
    """Rough peak: weights + attention patterns alive at once (+ one layer's softmax work)."""
    from spectra_interp.models import load_config

    c = load_config(model)
    layers, heads = c.num_hidden_layers, c.num_attention_heads
    params = c.vocab_size * c.hidden_size * 2 + layers * (
        4 * c.hidden_size**2 + 3 * c.hidden_size * c.intermediate_size
    )
    pattern = heads * ctx * ctx * dtype_bytes
    alive = {"cache-all": layers, "cache-group": layers_per_pass}.get(config, 0)
    return (params * dtype_bytes + (alive + 3) * pattern) / 2**30


def available_gib(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info()[0] / 2**30
    meminfo = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+)", meminfo).group(1)) / 2**20


def run_child(args: argparse.Namespace, config: str, ctx: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--config",
        config,
        "--ctx",
        str(ctx),
        "--model",
        args.model,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--repeats",
        str(args.repeats),
        "--layers-per-pass",
        str(args.layers_per_pass),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit_exponent(ctxs: list[int], times: list[float]) -> float | None:
    """Least-squares slope of log(time) on log(ctx): time ~ ctx^k."""
    if len(ctxs) < 2:
        return None
    xs, ys = [math.log(c) for c in ctxs], [math.log(t) for t in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def table(args: argparse.Namespace, rows: list[dict]) -> str:
    bare = {r["ctx"]: r for r in rows if r["config"] == "bare" and "median_s" in r}
    lines = [
        "| ctx | configuration | median s | tokens/s | peak GiB | time / bare | peak / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "median_s" not in r:
            lines.append(f"| {r['ctx']} | {r['config']} | skipped: {r['skip']} | | | | |")
            continue
        b = bare.get(r["ctx"])
        t_ratio = f"{r['median_s'] / b['median_s']:.3f}" if b else "n/a"
        m_ratio = f"{r['peak_gib'] / b['peak_gib']:.3f}" if b else "n/a"
        lines.append(
            f"| {r['ctx']} | {r['config']} | {r['median_s']:.3f} | {r['ctx'] / r['median_s']:,.0f}"
            f" | {r['peak_gib']:.2f} | {t_ratio} | {m_ratio} |"
        )
    lines.append("")
    for config in args.configs:
        done = [r for r in rows if r["config"] == config and "median_s" in r]
        k = fit_exponent([r["ctx"] for r in done], [r["median_s"] for r in done])
        if k is not None:
            lines.append(f"- {config}: time grows as ctx^{k:.2f} over {[r['ctx'] for r in done]}")
    return "\n".join(lines)


def header(args: argparse.Namespace) -> str:
    import torch
    import transformer_lens
    import transformers

    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(0)})"
    return (
        f"## {args.model}, {args.dtype}, {device}\n\n"
        f"{datetime.date.today()} · {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs · torch {torch.__version__}, transformer-lens "
        f"{transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '?'}, "
        f"transformers {transformers.__version__} · median of {args.repeats} runs after a "
        f"warm-up, each configuration in its own process\n\n"
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
    p.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        args.ctx = int(args.ctx)
        print(json.dumps(measure(args)))
        return
    args.configs = args.configs.split(",")
    dtype_bytes = 2 if args.dtype in ("float16", "bfloat16") else 4
    free = available_gib(args.device)
    rows = []
    for ctx in [int(c) for c in args.ctx.split(",")]:
        for config in args.configs:
            est = estimate_gib(args.model, config, ctx, args.layers_per_pass, dtype_bytes)
            if est > 0.9 * free:
                rows.append(
                    {"ctx": ctx, "config": config, "skip": f"needs ~{est:.1f} GiB of {free:.1f}"}
                )
            else:
                rows.append({"ctx": ctx, "config": config, **run_child(args, config, ctx)})
            if "error" in rows[-1]:
                rows[-1]["skip"] = rows[-1].pop("error")
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    text = header(args) + "\n" + table(args, rows) + "\n"
    print(text)
    if not args.no_write:
        device = args.device.split(":")[0]
        write_section(
            text, f"{args.model}-{args.dtype}-{device}-{args.ctx}-{','.join(args.configs)}"
        )


if __name__ == "__main__":
    main()
