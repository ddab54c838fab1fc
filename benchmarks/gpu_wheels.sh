#!/usr/bin/env bash
# Prepare, where pip reaches PyPI, what the GPU machine lacks, in .whl/ (git-ignored; carried to it):
# - wheels for its Python 3.12 on x86-64 Linux: its image has torch, transformers, accelerate,
#   einops, jaxtyping, numpy, pandas, scipy, pyarrow, jinja2 and more, but not these. Of
#   transformer-lens's requirements, wandb and transformers-stream-generator are left out: nothing
#   Spectra imports needs them (the latter has no wheel at all). Keep one version of each: two stop
#   the install. importlib-metadata stays at 8.7 (circuitsvis imports it; 10.x needs
#   lazy_importer, which the image lacks). The SmolLM2 GGUF (100 MB) is over the carry limit and stays here;
# - llama-3-8b-arch/: the Llama-3-8B architecture with SmolLM2's tokenizer (the real weights and
#   tokenizer need the network), for the check's short sweep on random weights.
# Run it with the project's venv: .venv/bin/python must load SmolLM2's tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
platforms=()
for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    transformer-lens==4.3.0 circuitsvis==1.43.3 plotly==7.1.0 gguf==0.19.0 \
    beartype fancy-einsum typeguard datasets dill multiprocess importlib-metadata==8.7.0
.venv/bin/python - .whl/llama-3-8b-arch <<'PY'
import json, sys
from importlib.resources import files
from pathlib import Path

from spectra_interp.models import load_tokenizer

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
config = json.loads(files("spectra_interp").joinpath("assets/configs/llama-3-8b.json").read_text())
config.update(architectures=["LlamaForCausalLM"], model_type="llama")
(folder / "config.json").write_text(json.dumps(config))
load_tokenizer("smollm2-135m").save_pretrained(folder)
PY
ls .whl
du -sh .whl
