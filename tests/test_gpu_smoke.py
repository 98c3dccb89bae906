"""``benchmarks/gpu_smoke.sh``: the GPU path's script stays runnable where no GPU is (its ``check`` mode runs the
same command lines at toy sizes on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_smoke.sh"


def run_script(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_an_unknown_mode_is_refused_with_the_valid_ones(tmp_path):
    done = run_script("fast", out=tmp_path)
    assert done.returncode == 2
    assert "unknown mode 'fast' (valid: smoke, scale, check)" in done.stderr


@pytest.mark.expensive
def test_check_mode_runs_every_stage_on_the_cpu(tmp_path):
    done = run_script("check", out=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["stage"] for line in lines] == ["device", "pipeline", "train_throughput", "policy_throughput", "scale"]
    by_stage = {line["stage"]: line["result"] for line in lines}
    assert by_stage["device"]["auto"].startswith("cpu")
    assert set(by_stage["pipeline"]["agents"]) == {"random", "pctr_greedy", "ce_ppo", "ppo_scratch", "watch_greedy"}
    assert by_stage["train_throughput"]["llm_sps"] > 0 and by_stage["policy_throughput"]["slates_per_s"] > 0
    assert by_stage["scale"]["steps"] == 2048
