"""``longrec train --resume RUN``: Ctrl-C or kill -9, then resume in the same folder, ends exactly as an
uninterrupted run; ``longrec runs`` shows a dead run as such; runs that cannot resume fail in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from experiments import cli
from experiments.listing import list_runs
from tests.cli_processes import finish, longrec, only_run, summary

TRAIN = ["train", "-c", "smoke", "agent=ce_ppo", "total_timesteps=3072", "ppo.eval_every=1024", "ppo.eval_users=8",
         "ppo.log_interval_steps=256", "logging.wandb=true", "--quiet"]
"""CE -> PPO on a tiny policy: 24 rollouts of 128 steps, held-out evaluation every 1024 steps"""

def stop_when_logged(process: subprocess.Popen, runs_dir: Path, step: int, sig: int) -> Path:
    """Send ``sig`` once the run has logged a training row at ``step`` or later (mid-training)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.1)
        runs = list(runs_dir.glob("*/metrics.jsonl"))
        if runs and any((json.loads(line).get("step") or -1) >= step
                        for line in runs[0].read_text().splitlines() if line.endswith("}")):
            process.send_signal(sig)
            return runs[0].parent
        assert process.poll() is None, "the run ended before it could be stopped"
    raise AssertionError("the run never reached the step")


def curve(run: Path) -> list[tuple]:
    """Every metrics row's step and its numbers except wall-clock ones (time, SPS)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [tuple(sorted((k, v) for k, v in row.items() if k not in ("time", "charts/SPS"))) for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    runs_dir = tmp_path_factory.mktemp("straight")
    code, err = finish(longrec(*TRAIN, runs_dir=runs_dir))
    assert code == 0, err
    return only_run(runs_dir)


@pytest.mark.parametrize("how", ["ctrl_c", "kill_9"])
def test_stop_then_resume_ends_exactly_as_an_uninterrupted_run(how, uninterrupted, tmp_path):
    # Ctrl-C at the first PPO row: the whole rest of the run (a few seconds on a busy machine) is the window in
    # which the signal must land; kill -9 after the checkpoint at 1024 steps
    sig, extra, at = (signal.SIGINT, ["ppo.checkpoint_every=100000"], 256) if how == "ctrl_c" else (
        signal.SIGKILL, ["ppo.checkpoint_every=512"], 1300)
    process = longrec(*TRAIN, *extra, runs_dir=tmp_path)
    run = stop_when_logged(process, tmp_path, at, sig)
    code, err = finish(process)
    stopped = summary(run)
    if how == "ctrl_c":
        assert code == 130 and f"longrec train --resume {run}" in err
        assert stopped["status"] == "interrupted"
    else:
        assert code == -signal.SIGKILL and stopped["status"] == "running"  # nobody wrote its end
    (row,) = list_runs([tmp_path])
    assert row["status"] == ("interrupted" if how == "ctrl_c" else "died") and row["agent"] == "ce_ppo"
    pretrained = (run / "checkpoints" / "pretrained" / "best" / "model.safetensors").stat().st_mtime_ns
    logs = (run / "logs.npz").stat().st_mtime_ns

    code, err = finish(longrec("train", "--resume", str(run), "--quiet"))
    assert code == 0, err
    resumed, straight = summary(run), summary(uninterrupted)
    assert resumed["status"] == "finished" and len(resumed["resumes"]) == 1
    assert resumed["resumes"][0]["from_status"] == ("interrupted" if how == "ctrl_c" else "died")
    assert resumed["resumes"][0]["from_step"] % 128 == 0  # a rollout boundary
    # exactly the budget and the numbers of the uninterrupted run, one curve in one metrics.jsonl
    assert resumed["metrics"]["train/num_timesteps"] == straight["metrics"]["train/num_timesteps"] == 3072
    assert resumed["metrics"]["eval/return"] == straight["metrics"]["eval/return"]
    assert curve(run) == curve(uninterrupted)
    # no repeated log generation or pretraining; the same W&B run, resumed by id
    assert (run / "checkpoints" / "pretrained" / "best" / "model.safetensors").stat().st_mtime_ns == pretrained
    assert (run / "logs.npz").stat().st_mtime_ns == logs
    assert resumed["wandb"]["id"] == stopped["wandb"]["id"]
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(stopped["wandb"]["id"]) for name in offline)


def fake_run(folder: Path, **summary_values) -> Path:
    """A run folder with the smoke config and the given summary entries."""
    from experiments.config import load_config, save_config

    folder.mkdir(parents=True)
    save_config(load_config("smoke", ["agent=ce_ppo"]), folder / "config.yaml")
    (folder / "summary.json").write_text(json.dumps({"agent": "ce_ppo", "job_type": "train", **summary_values}))
    return folder


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("finished", "the run has finished; train longer in a new run"),
        ("running", "the run is still running (pid"),
        ("eval", "a `longrec eval` run has no training to continue"),
        ("not a run", "is not a run folder (summary.json + config.yaml) nor inside one"),
        ("missing", "no such run folder or checkpoint"),
        ("override", "--resume continues the run with its own config.yaml; drop ppo.learning_rate=1e-4"),
    ],
)
def test_runs_that_cannot_resume_fail_in_one_line_and_stay_untouched(case, expected, tmp_path, capsys):
    import socket

    folder = tmp_path / "run"
    if case == "finished":
        fake_run(folder, status="finished")
    elif case in ("running", "override"):
        fake_run(folder, status="running", pid=os.getpid(), host=socket.gethostname())
    elif case == "eval":
        fake_run(folder, status="failed", job_type="eval")
    elif case == "not a run":
        folder.mkdir()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    extra = ["ppo.learning_rate=1e-4"] if case == "override" else []
    assert cli.main(["train", "--resume", str(folder), *extra]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("longrec train: error: ") and expected in line, line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_the_resume_key_takes_a_checkpoint_inside_the_run(tmp_path):
    """``resume=<run>/checkpoints/ppo/last.pt`` finds its run folder (the documented ``ppo.resume`` forms)."""
    from experiments.resume import run_folder_of

    run = fake_run(tmp_path / "run", status="interrupted")
    (run / "checkpoints" / "ppo").mkdir(parents=True)
    (run / "checkpoints" / "ppo" / "last.pt").write_bytes(b"")
    assert run_folder_of(run / "checkpoints" / "ppo" / "last.pt").resolve() == run.resolve()
    assert run_folder_of(run / "checkpoints" / "ppo").resolve() == run.resolve()
    assert run_folder_of(run) == run
