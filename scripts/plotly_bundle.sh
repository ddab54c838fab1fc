#!/usr/bin/env bash
# Refresh the plotly.js bundle the reports inline (spectra_interp/assets/plotly/): plotly's own
# partial "cartesian" distribution from the npm registry, at the plotly.js version of the
# installed plotly (or the version given as $1), with its LICENSE, README and package.json.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
version="${1:-$("$python" -c 'from plotly.offline import get_plotlyjs_version as v; print(v())')}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "plotly.js-cartesian-dist-min@$version" >/dev/null && tar xzf ./*.tgz)
dest=spectra_interp/assets/plotly
mkdir -p "$dest"
cp "$work"/package/{plotly-cartesian.min.js,LICENSE,README.md,package.json} "$dest"/
echo "plotly.js cartesian $version -> $dest"
