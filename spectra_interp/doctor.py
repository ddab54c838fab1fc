"""`spectra doctor`: what this machine has for Spectra, one line per item.

It says whether the offline default can run (exit code 0 when it can) and what the headline
preset (Llama-3-8B, fp16, CUDA) would still need. A Hugging Face token is reported as set or
not, never printed.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
from collections.abc import Callable
from dataclasses import dataclass

from spectra_interp import hub

HEADLINE_GPU_GIB = 20  # Llama-3-8B in fp16 (16 GB of weights) plus one 4096-token window
HEADLINE_WEIGHTS = "meta-llama/Meta-Llama-3-8B"


@dataclass(frozen=True)
class Check:
    """One line of the report: what, whether it is there, and what it is needed for."""

    name: str
    ok: bool
    detail: str
    needed_for: str  # "offline default", "headline preset" or "" (information only)

    def line(self) -> str:
        mark = "ok " if self.ok else ("-- " if not self.needed_for else "NO ")
        need = f"  (needed for the {self.needed_for})" if self.needed_for and not self.ok else ""
        return f"{mark} {self.name:<22} {self.detail}{need}"


def _version(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def _package(name: str, package: str, needed_for: str) -> Check:
    version = _version(package)
    return Check(name, version is not None, version or "not installed", needed_for)


def _gpu_checks() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        built = f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
        return [Check("CUDA GPU", False, f"none visible ({built})", "headline preset")]
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gib = props.total_memory / 2**30
        out.append(
            Check(
                f"GPU {i}",
                gib >= HEADLINE_GPU_GIB,
                f"{props.name}, {gib:.0f} GiB (CUDA {torch.version.cuda})",
                "headline preset",
            )
        )
    return out


def _offline_model() -> Check:
    from spectra_interp.errors import SpectraError
    from spectra_interp.models.sources import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except SpectraError as err:
        return Check("offline default model", False, str(err), "offline default")
    return Check("offline default model", True, f"SmolLM2-135M GGUF at {path}", "offline default")


def _headline_weights(reachable: bool, token: bool) -> Check:
    from spectra_interp.models.sources import in_local_cache

    if in_local_cache(HEADLINE_WEIGHTS):
        return Check("Llama-3-8B weights", True, "in the local Hugging Face cache", "")
    if reachable and token:
        return Check("Llama-3-8B weights", True, "downloadable (hub reachable, token set)", "")
    missing = "the hub is not reachable" if not reachable else "no token is set (gated model)"
    return Check("Llama-3-8B weights", False, f"not cached and {missing}", "headline preset")


def checks() -> list[Check]:
    import torch

    reachable, token = hub.reachable(), hub.token_set()
    return [
        Check("python", True, platform.python_version(), ""),
        Check("torch", True, torch.__version__, "offline default"),
        *_gpu_checks(),
        _package("transformer-lens", "transformer-lens", "offline default"),
        _package("transformers", "transformers", "offline default"),
        _package("gguf", "gguf", "offline default"),
        _offline_model(),
        Check(
            "Hugging Face hub",
            reachable,
            "reachable" if reachable else "not reachable (offline sources only)",
            "",
        ),
        Check("Hugging Face token", token, "set" if token else "not set", ""),
        _headline_weights(reachable, token),
    ]


def run(print_line: Callable[[str], object] = print) -> int:
    """Print the report; 0 when the offline default can run, 1 otherwise."""
    report = checks()
    for check in report:
        print_line(check.line())
    offline_ok = all(c.ok for c in report if c.needed_for == "offline default")
    headline = [c.name for c in report if c.needed_for == "headline preset" and not c.ok]
    print_line(
        "The offline default can run: python scripts/sweep_heads.py"
        if offline_ok
        else "The offline default cannot run: see the NO lines above."
    )
    print_line(
        "The headline preset (spectra experiment) has what it needs."
        if not headline
        else f"The headline preset (spectra experiment) still needs: {', '.join(headline)}."
    )
    return 0 if offline_ok else 1
