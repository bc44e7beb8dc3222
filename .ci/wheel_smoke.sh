#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment and run it from an empty
# directory: the version, a built-in preset, and a 2-trial study on the built-in defaults.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/jetsearch-*.whl

mkdir "$work/run"
cd "$work/run"
jet="$work/venv/bin/jetsearch"
"$jet" --version
"$jet" model show nano
"$jet" study --target local --trials 2 --storage "$work/run/study.log"
"$jet" show --study local --storage "$work/run/study.log"
echo "wheel smoke test: passed"
