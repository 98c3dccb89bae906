#!/usr/bin/env bash
# Set up ./.venv (scripts/setup.sh) and run the main job: `longrec quickstart` on longrec/Video-v0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/longrec quickstart "$@"
