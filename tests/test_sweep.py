"""Sweeps: W&B sweep-file parsing, grid/random sampling, the local process pool, the W&B backend (mocked)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import cli
from experiments import sweep as sw
from experiments.config import ExperimentConfig


def quadratic_job(cfg: ExperimentConfig, run) -> dict:
    """Synthetic objective for the sweep tests: peaks at learning_rate = 10**-3.4, diverges at >= 1e-2."""
    lr = cfg.ppo.learning_rate
    if lr >= 1e-2:
        raise FloatingPointError(f"loss diverged at learning_rate={lr}")
    value = -((math.log10(lr) + 3.4) ** 2) - (cfg.kl.coef - 0.05) ** 2
    for step in range(1, 4):
        run.log({"charts/episodic_return": value * step / 3}, step=step * 10)
    run.update_summary(metrics={"eval/return": value})
    return {"metrics": {"eval/return": value}}


def _write_sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(body)
    return path


GRID = """\
program: longrec
command: [longrec, train, --config, smoke]
method: grid
metric: {name: eval/return, goal: maximize}
parameters:
  ppo.learning_rate: {values: [1.0e-4, 3.0e-4, 1.0e-3, 1.0e-2]}
  kl.coef: {value: 0.05}
"""


def test_local_sweep_records_the_failed_trial_and_ranks_the_others(tmp_path):
    spec = sw.load_sweep(_write_sweep(tmp_path, GRID))
    assert (spec.job, spec.base_config, spec.method) == ("train", "smoke", "grid")
    folder, results = sw.run_local_sweep(spec, workers=2, out_dir=tmp_path / "out", progress=False,
                                         job="tests.test_sweep:quadratic_job")
    assert [r.status for r in results] == ["finished", "finished", "finished", "failed"]
    failed = results[3]
    assert failed.params["ppo.learning_rate"] == pytest.approx(1e-2)
    assert "FloatingPointError: loss diverged" in failed.error
    assert "loss diverged at learning_rate=0.01" in (Path(failed.run_dir) / "error.txt").read_text()
    assert json.loads((Path(failed.run_dir) / "summary.json").read_text())["status"] == "failed"
    # the finished trials carry the objective's exact values
    for r in results[:3]:
        assert r.value == pytest.approx(-((math.log10(r.params["ppo.learning_rate"]) + 3.4) ** 2))
    # ranked table: best (3e-4, closest to 10**-3.4) first, failure last
    with open(folder / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["ppo.learning_rate"]) for r in rows] == pytest.approx([3e-4, 1e-3, 1e-4, 1e-2])
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["failed"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", ""]
    markdown = (folder / "results.md").read_text()
    assert "3/4 finished" in markdown and "failed: FloatingPointError" in markdown
    assert len((folder / "trials.jsonl").read_text().splitlines()) == 4
    assert (folder / "sweep.yaml").read_text() == GRID
    # each trial is a normal run folder whose config holds the trial's parameters
    best = Path(next(r.run_dir for r in results if r.params["ppo.learning_rate"] == pytest.approx(3e-4)))
    assert "learning_rate: 0.0003" in (best / "config.yaml").read_text()
    assert len((best / "metrics.jsonl").read_text().splitlines()) == 3
    # compare on the sweep folder groups by the swept key and leaves the failed trial out
    assert cli.main(["compare", str(folder), "--quiet"]) == 0
    table = (folder / "compare" / "compare.md").read_text()
    assert "| smoke (ppo.learning_rate=0.0003) | 1 | -0.0" in table
    assert "left out: trial-003" in table and "(failed)" in table


def test_grid_order_and_random_sampling_are_deterministic(tmp_path):
    spec = sw.load_sweep(_write_sweep(tmp_path, """\
method: random
metric: {name: eval/return}
parameters:
  ppo.learning_rate: {min: 1.0e-5, max: 1.0e-2, distribution: log_uniform_values}
  ppo.n_epochs: {min: 1, max: 3}
  ppo.clip_range: {min: 0.1, max: 0.3}
  agent: {values: [ce_ppo, ce_ppo_kl]}
  seed: {value: 7}
"""))
    assert spec.parameters["ppo.n_epochs"]["distribution"] == "int_uniform"
    assert spec.parameters["ppo.clip_range"]["distribution"] == "uniform"
    a, b = sw.random_trials(spec, 200, seed=3), sw.random_trials(spec, 200, seed=3)
    assert a == b and a != sw.random_trials(spec, 200, seed=4)
    lrs = np.array([t["ppo.learning_rate"] for t in a])
    assert lrs.min() >= 1e-5 and lrs.max() <= 1e-2
    assert 0.3 < np.mean(lrs < 3.16e-4) < 0.7  # log-uniform: half the mass below the geometric midpoint
    assert {t["ppo.n_epochs"] for t in a} == {1, 2, 3} and {t["seed"] for t in a} == {7}
    grid = sw.load_sweep(_write_sweep(tmp_path, """\
method: grid
parameters:
  kl.coef: {values: [0.0, 0.1]}
  seed: {values: [0, 1, 2]}
"""))
    trials = sw.grid_trials(grid)
    assert trials[:4] == [{"kl.coef": 0.0, "seed": 0}, {"kl.coef": 0.0, "seed": 1},
                          {"kl.coef": 0.0, "seed": 2}, {"kl.coef": 0.1, "seed": 0}]
    assert len(trials) == 6
    assert sw.overrides_of(trials[3]) == ["kl.coef=0.1", "seed=0"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("method: hyperband\nparameters: {seed: {value: 1}}\n", "'method' must be one of grid, random, bayes"),
        ("method: grid\nparameters: {ppo.lr: {values: [1]}}\n", "unknown config key 'ppo.lr'"),
        ("method: grid\nparameters: {ppo.gamma: {values: [0.9, 2.0]}}\n", "'ppo.gamma'=2.0"),
        ("method: grid\nparameters: {seed: {distribution: beta, min: 0, max: 1}}\n", "distribution 'beta' not supported"),
        ("method: grid\nparameters: {ppo.gamma: {min: 0.9, max: 0.99}}\n", "method grid needs discrete parameters"),
        ("method: random\nmetric: {name: x, goal: up}\nparameters: {seed: {value: 1}}\n", "'metric.goal' must be one of"),
        ("method: grid\nprogramme: x\nparameters: {seed: {value: 1}}\n", "unknown top-level keys ['programme']"),
        ("method: grid\nparameters: {seed: {min: 3, max: 1}}\n", "min=3 > max=1"),
    ],
)
def test_invalid_sweep_files_fail_before_any_trial(tmp_path, body, message):
    path = _write_sweep(tmp_path, body)
    with pytest.raises(sw.SweepError) as info:
        spec = sw.load_sweep(path)
        sw.grid_trials(spec)
    assert message in str(info.value)


def test_random_and_bayes_need_a_count(tmp_path):
    spec = sw.load_sweep(_write_sweep(tmp_path, "method: random\nmetric: {name: eval/return}\n"
                                                "parameters: {seed: {values: [1, 2]}}\n"))
    with pytest.raises(sw.SweepError, match="needs a trial count"):
        sw.run_local_sweep(spec, out_dir=tmp_path / "o", progress=False)


def test_bayes_without_optuna_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    spec = sw.load_sweep(_write_sweep(tmp_path, "method: bayes\nmetric: {name: eval/return}\n"
                                                "parameters: {kl.coef: {min: 0.0, max: 1.0}}\n"))
    with pytest.raises(sw.SweepError, match=r"needs Optuna \(pip install optuna\).*--backend wandb"):
        sw.run_local_sweep(spec, count=2, out_dir=tmp_path / "o", progress=False,
                           job="tests.test_sweep:quadratic_job")


def test_shipped_sweeps_are_valid():
    for name in ("kl_lr", "kl_lr_bayes", "tiny"):
        spec = sw.load_sweep(name)
        assert spec.metric == "eval/return" and spec.goal == "maximize"
    assert len(sw.grid_trials(sw.load_sweep("kl_lr"))) == 24
    assert sw.load_sweep("tiny").job == "eval"


def test_wandb_backend_registers_the_file_and_starts_agents(tmp_path, monkeypatch):
    import wandb

    registered = {}

    def fake_sweep(sweep, project=None, entity=None, prior_runs=None):
        registered.update(sweep=sweep, project=project, entity=entity)
        return "abc123"

    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setattr("experiments.wandb_logging.is_logged_in", lambda: True)
    spec = sw.load_sweep("kl_lr")
    assert sw.wandb_sweep_id(spec, "proj", "team") == "team/proj/abc123"
    assert registered["sweep"]["parameters"]["kl.coef"] == {"values": [0.0, 0.01, 0.05, 0.2]}
    assert registered["sweep"]["command"][1:3] == ["longrec", "train"]

    started = []

    class FakeProc:
        def __init__(self, cmd, env):
            started.append((cmd, env))

        def wait(self):
            return 0

    assert sw.run_wandb_agents("team/proj/abc123", workers=2, count=3, popen=FakeProc) == 0
    assert [c for c, _ in started] == [[sys.executable, "-m", "wandb", "agent", "--count", "3", "team/proj/abc123"]] * 2
    assert started[0][1]["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_wandb_command_carries_extra_overrides():
    spec = sw.with_command_overrides(sw.load_sweep("kl_lr"), ["logging.tags=[cluster]", "env.num_envs=256"])
    assert spec.raw["command"] == ["${env}", "longrec", "train", "--config", "video", "logging.tags=[cluster]",
                                   "env.num_envs=256", "${args_no_hyphens}"]
    with pytest.raises(Exception, match="unknown config key 'env.num_env'"):
        sw.with_command_overrides(sw.load_sweep("kl_lr"), ["env.num_env=3"])


def test_wandb_backend_without_login_points_to_local(monkeypatch, capsys):
    monkeypatch.setattr("experiments.wandb_logging.is_logged_in", lambda: False)
    assert cli.main(["sweep", "kl_lr", "--backend", "wandb"]) == 2
    err = capsys.readouterr().err
    assert "--backend wandb needs a W&B login" in err and "--backend local" in err


def test_cli_sweep_rejects_bad_overrides_before_running(tmp_path, capsys):
    code = cli.main(["sweep", "tiny", "--out", str(tmp_path / "s"), "ppo.gama=0.9"])
    assert code == 2
    assert "unknown config key 'ppo.gama' (did you mean 'ppo.gamma'?)" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.expensive
def test_cli_tiny_sweep_end_to_end(tmp_path, capsys):
    """The shipped tiny sweep through the CLI: real simulator evaluations, one trial invalid on purpose."""
    assert cli.main(["sweep", "tiny", "--workers", "2", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3/4 finished" in out and "num_items=1 must be >= 2" in out


def test_local_bayes_with_optuna_finds_the_peak_region(tmp_path):
    pytest.importorskip("optuna")
    spec = sw.load_sweep(_write_sweep(tmp_path, """\
command: [longrec, train, --config, smoke]
method: bayes
metric: {name: eval/return, goal: maximize}
parameters:
  ppo.learning_rate: {min: 1.0e-5, max: 5.0e-3, distribution: log_uniform_values}
  kl.coef: {values: [0.0, 0.05, 0.5]}
"""))
    folder, results = sw.run_local_sweep(spec, workers=2, count=4, out_dir=tmp_path / "b", progress=False, seed=1,
                                         job="tests.test_sweep:quadratic_job")
    assert len(results) == 4 and all(r.status == "finished" for r in results)
    for r in results:
        assert 1e-5 <= r.params["ppo.learning_rate"] <= 5e-3 and r.params["kl.coef"] in (0.0, 0.05, 0.5)
        lr, kl = r.params["ppo.learning_rate"], r.params["kl.coef"]
        assert r.value == pytest.approx(-((math.log10(lr) + 3.4) ** 2) - (kl - 0.05) ** 2)
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [float(r["eval/return"]) for r in rows] == sorted((r.value for r in results), reverse=True)
