"""Small sweeps on SmolLM2 that several test modules share."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--ctx", "64", "--max-windows", "6", "--n-boot", "50", "--sample-per-window", "16"]


def sweep_cmd(out, *extra):
    return [
        sys.executable,
        str(ROOT / "scripts" / "sweep_heads.py"),
        *SMALL,
        "--out",
        str(out),
        *extra,
    ]


def run_sweep_cli(out, *extra, env=None, timeout=600):
    return subprocess.run(
        sweep_cmd(out, *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
