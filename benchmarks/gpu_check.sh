#!/usr/bin/env bash
# The GPU check, in phases that each run under their own timeout and write their log and results
# under $OUT as they go (a phase that runs out of time still leaves what it wrote):
#   1. environment: torch, CUDA, the GPU, the package imports (spectra doctor);
#   2. the headline architecture (random:llama-3-8b, fp16, 4096 tokens, batch 1): the SDPA forward
#      against the fused default and the stream hook method, time and peak GPU memory;
#   3. if time remains, a short sweep on the Llama-3-8B architecture (random weights, SmolLM2's
#      tokenizer: the real weights need the network).
# Wheels the machine lacks travel in .whl/ (benchmarks/gpu_wheels.sh fetches them where pip
# works); PHASE_S sets each phase's limit in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PHASE_S=${PHASE_S:-150}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
fi

phase() {  # phase NAME COMMAND...: run under the time limit, log to $OUT/NAME.log
    local name=$1
    shift
    echo "== $name" | tee -a "$OUT/phases.txt"
    timeout "$PHASE_S" "$@" >"$OUT/$name.log" 2>&1
    echo "$name exit $?" | tee -a "$OUT/phases.txt"
}

phase env sh -c 'nvidia-smi --query-gpu=name,memory.total --format=csv; python3 -m spectra_interp.cli doctor'
phase bench python3 benchmarks/bench_extract.py --device cuda --model random:llama-3-8b \
    --dtype float16 --ctx 4096 --configs sdpa,fused,stream --repeats 3
cp benchmarks/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null
phase sweep sh -c '
    arch="$0/llama-3-8b-arch"
    python3 - "$arch" <<PY
import json, sys
from importlib.resources import files
from pathlib import Path
from spectra_interp.models import load_tokenizer
folder = Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
config = json.loads(files("spectra_interp").joinpath("assets/configs/llama-3-8b.json").read_text())
config.update(architectures=["LlamaForCausalLM"], model_type="llama")
(folder / "config.json").write_text(json.dumps(config))
load_tokenizer("smollm2-135m").save_pretrained(folder)
PY
    python3 scripts/sweep_heads.py --model "random:$arch" --device cuda --dtype float16 \
        --ctx 4096 --max-windows 8 --out "$0/sweep" --overwrite --no-progress
' "$OUT"
cp "$OUT/sweep/head_stats.csv" "$OUT/sweep/summary.json" "$OUT/" 2>/dev/null
exit 0
