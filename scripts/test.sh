#!/usr/bin/env bash
# Set up ./.venv (scripts/setup.sh) with every extra the tests use and run the test suite
# (slow tests marked `expensive` are skipped). Under CI=true a test that skips for a missing
# module fails instead (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,lora,tune,peers,explain,privacy,ray
export MPLBACKEND=Agg WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
