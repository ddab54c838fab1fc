#!/usr/bin/env bash
# The CUDA checks of the headline configuration, in one go (a GPU machine, no network needed):
#   1. bench_extract.py: random:llama-3-8b, fp16, bare vs stream vs cache at 1024/2048/4096 tokens;
#   2. a full sweep (trained pass + random-init control) on the Llama-3-8B architecture with
#      random weights, fp16, CUDA, 4096-token windows, batch 1.
# MODEL_DIR is a folder holding a Llama-3-8B config.json and any tokenizer (the real Llama-3
# weights cannot be downloaded where this was first run). Results go to ${OUT:-gpu-check}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
model_dir=${MODEL_DIR:?set MODEL_DIR to a folder with a Llama-3-8B config.json and a tokenizer}
ctxs=${CTXS:-1024,2048,4096}
ctx=${CTX:-4096}
windows=${WINDOWS:-8}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt" || true
python benchmarks/bench_extract.py --device "${DEVICE:-cuda}" --model "${BENCH_MODEL:-random:llama-3-8b}" \
    --dtype float16 --ctx "$ctxs" --configs bare,bare-trunk,stream,cache-group 2>&1 | tee "$out/bench.log"
cp benchmarks/RESULTS.md "$out/RESULTS.md"
python scripts/sweep_heads.py --model "random:$model_dir" --device "${DEVICE:-cuda}" --dtype float16 \
    --ctx "$ctx" --max-windows "$windows" --batch-size 1 --out "$out/sweep" --overwrite \
    --no-progress 2>&1 | tee "$out/sweep.log"
cp "$out/sweep/head_stats.csv" "$out/sweep/summary.json" "$out/"
