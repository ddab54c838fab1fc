#!/usr/bin/env bash
# The GPU check, in phases that each run under their own timeout and write their log and results
# under $OUT as they go (a phase that runs out of time still leaves what it wrote):
#   1. environment: torch, CUDA, the GPU, the package imports (spectra doctor);
#   2. the headline architecture (random:llama-3-8b, fp16, 4096 tokens, batch 1): the SDPA forward
#      against the fused default and the stream hook method, time and peak GPU memory;
#   3. the whole default sweep's marginal cost per window (sweeps of SWEEP_WINDOWS windows, the
#      trained pass) against the SDPA forward, on the same architecture (random weights, SmolLM2's
#      tokenizer: the real weights need the network);
#   4. if time remains, a short sweep on that architecture (head statistics to look at).
# What the machine lacks travels in .whl/ (benchmarks/gpu_wheels.sh prepares it where pip works).
# PHASE_S sets each phase's limit in seconds; DEVICE, DTYPE, MODEL, CTX and WINDOWS exist so that
# the same script can be proven on a CPU with a small model before GPU time is spent on it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PHASE_S=${PHASE_S:-110}  # four phases: the whole script stays under 8 minutes
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-float16}
MODEL=${MODEL:-random:llama-3-8b}
CTX=${CTX:-4096}
WINDOWS=${WINDOWS:-8}
ARCH=${ARCH:-.whl/llama-3-8b-arch}
SWEEP_MODEL=${SWEEP_MODEL:-random:$ARCH}
SWEEP_WINDOWS=${SWEEP_WINDOWS:-3,5}  # both at least the sweep's attention slices (bench_extract checks)
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
phase bench python3 benchmarks/bench_extract.py --device "$DEVICE" --model "$MODEL" \
    --dtype "$DTYPE" --ctx "$CTX" --configs sdpa,fused,stream --repeats 3
phase sweep-bench python3 benchmarks/bench_extract.py --device "$DEVICE" --model "$MODEL" \
    --dtype "$DTYPE" --ctx "$CTX" --configs sdpa,sweep --sweep-model "$SWEEP_MODEL" \
    --sweep-windows "$SWEEP_WINDOWS" --repeats 1 --no-memory
cp benchmarks/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null
phase sweep python3 scripts/sweep_heads.py --model "$SWEEP_MODEL" --device "$DEVICE" \
    --dtype "$DTYPE" --ctx "$CTX" --max-windows "$WINDOWS" --out "$OUT/sweep" --overwrite \
    --no-progress
cp "$OUT/sweep/head_stats.csv" "$OUT/sweep/summary.json" "$OUT/" 2>/dev/null
exit 0
