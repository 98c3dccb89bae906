#!/usr/bin/env bash
# GPU smoke test for machines with CUDA: device="auto" must pick the GPU, and a short
# CE-pretrain -> PPO (with KL) run, a SlateQ run and the throughput benchmark must run on it.
# Usage: bash benchmarks/gpu_smoke.sh   (about 2-4 minutes on one GPU; JSON lines on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline MPLBACKEND=Agg

"$PY" - <<'PY'
import json, torch
from llm_policy.device import describe_device, resolve_device
device = resolve_device("auto")
print(json.dumps({"cuda_available": torch.cuda.is_available(), "auto": describe_device(device)}))
assert device.type == "cuda", "device='auto' did not select CUDA on this machine"
PY

# short end-to-end: embeddings, logs, CE pretraining, all learning agents, evaluation on 500 users
"$PY" benchmarks/long_term.py --env longrec/Video-v0 --budget-steps 20000 --eval-users 500 \
  --pretrain-users 100 --pretrain-epochs 1 --pretrain-batches 30 --num-envs 128 --n-steps 16 \
  --device auto --threads 4 --out runs/gpu_smoke/long_term | tail -n 1

"$PY" benchmarks/train_throughput.py --env longrec/Video-v0 --steps 16384 --num-envs 256 --n-steps 16 \
  --model base --device cuda --threads 4 | tail -n 1
