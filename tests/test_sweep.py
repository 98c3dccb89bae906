"""Sweeps: W&B sweep-file parsing, grid/random sampling, the local trial processes, resume, the W&B backend (mocked)."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
import signal
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


def flaky_job(cfg: ExperimentConfig, run) -> dict:
    """``quadratic_job``, except that trial $SWEEP_TEST_KILL kills its own process with SIGKILL (as the
    out-of-memory killer does) and trial $SWEEP_TEST_FAIL raises."""
    index = int(run.path.name.split("__")[0].removeprefix("trial-"))
    if os.environ.get("SWEEP_TEST_KILL") == str(index):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("SWEEP_TEST_FAIL") == str(index):
        raise RuntimeError(f"trial {index} fails on purpose")
    return quadratic_job(cfg, run)


def in_process_trials(next_trial, on_done, workers: int, threads: int) -> None:
    """``sweep.run_trials`` without processes: the bookkeeping tests run in seconds."""
    while (trial := next_trial()) is not None:
        on_done(sw.run_trial(trial))


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


RANDOM = """\
command: [longrec, train, --config, smoke]
method: random
metric: {name: eval/return, goal: maximize}
parameters:
  ppo.learning_rate: {min: 1.0e-5, max: 5.0e-3, distribution: log_uniform_values}
  kl.coef: {values: [0.0, 0.05, 0.5]}
  seed: {value: 7}
"""

BAYES = RANDOM.replace("method: random", "method: bayes")


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
    rows = [line for line in table.splitlines() if "(ppo.learning_rate=" in line]
    assert "(ppo.learning_rate=0.0003) |" in rows[0] and "| 1 | -0.0" in rows[0]  # best first, one seed
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
    assert cli.main(["sweep", "tiny", "--workers", "2", "--out", str(tmp_path / "s"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "3/4 finished" in captured.out  # exit code 1: a trial failed
    assert "trial 2 failed:" in captured.err and "num_items=1 must be >= 2" in captured.err


def test_local_bayes_with_optuna_finds_the_peak_region(tmp_path):
    pytest.importorskip("optuna")
    spec = sw.load_sweep(_write_sweep(tmp_path, BAYES.replace("  seed: {value: 7}\n", "")))
    folder, results = sw.run_local_sweep(spec, workers=2, count=4, out_dir=tmp_path / "b", progress=False, seed=1,
                                         job="tests.test_sweep:quadratic_job")
    assert len(results) == 4 and all(r.status == "finished" for r in results)
    for r in results:
        assert 1e-5 <= r.params["ppo.learning_rate"] <= 5e-3 and r.params["kl.coef"] in (0.0, 0.05, 0.5)
        lr, kl = r.params["ppo.learning_rate"], r.params["kl.coef"]
        assert r.value == pytest.approx(-((math.log10(lr) + 3.4) ** 2) - (kl - 0.05) ** 2)
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [float(r["eval/return"]) for r in rows] == sorted((r.value for r in results), reverse=True)


# --------------------------------------------------------------------------- killed trials, exit code, resume


def test_a_killed_trial_fails_alone_and_resume_reruns_only_the_unfinished(tmp_path, monkeypatch, capsys):
    """Real trial processes: trial 2 is SIGKILLed, trial 3 diverges; the others finish; --resume reruns 2 and 3."""
    monkeypatch.setenv("SWEEP_TEST_KILL", "2")
    monkeypatch.setattr(sw, "run_local_sweep", functools.partial(sw.run_local_sweep, job="tests.test_sweep:flaky_job"))
    folder = tmp_path / "s"
    args = ["sweep", str(_write_sweep(tmp_path, GRID)), "--workers", "2", "--out", str(folder), "--quiet"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "trial 2 failed: worker process died (exit code -9: killed by SIGKILL, e.g. out of memory)" in err
    assert "trial 3 failed: FloatingPointError: loss diverged" in err
    assert f"longrec sweep --resume {folder}" in err
    first = sw.read_trials(folder)
    assert [first[i].status for i in range(4)] == ["finished", "finished", "failed", "failed"]
    killed = json.loads((Path(first[2].run_dir) / "summary.json").read_text())
    assert killed["status"] == "failed" and "SIGKILL" in killed["error"]  # the sweep closed the dead trial's folder
    kept = {i: (Path(first[i].run_dir) / "summary.json").stat().st_mtime_ns for i in (0, 1)}

    monkeypatch.delenv("SWEEP_TEST_KILL")
    assert cli.main(["sweep", "--resume", str(folder), "--workers", "2", "--quiet"]) == 1  # trial 3 still diverges
    captured = capsys.readouterr()
    assert "3/4 finished" in captured.out
    assert "trial 3 failed" in captured.err and "trial 2" not in captured.err
    after = sw.read_trials(folder)
    assert after[2].status == "finished" and after[2].run_dir != first[2].run_dir
    assert after[2].value == pytest.approx(-((math.log10(1e-3) + 3.4) ** 2))
    for i in (0, 1):  # finished trials are not rerun: same record, same single folder, untouched
        assert after[i] == first[i]
        assert (Path(first[i].run_dir) / "summary.json").stat().st_mtime_ns == kept[i]
        assert len(list(folder.glob(f"trial-00{i}__*"))) == 1
    assert len((folder / "trials.jsonl").read_text().splitlines()) == 6
    assert json.loads((Path(first[2].run_dir) / "summary.json").read_text())["status"] == "failed"  # kept
    with open(folder / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["ppo.learning_rate"]) for r in rows] == pytest.approx([3e-4, 1e-3, 1e-4, 1e-2])
    assert [r["rank"] for r in rows] == ["1", "2", "3", ""]


def test_resume_random_reruns_the_same_parameters_of_failed_and_interrupted_trials(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "run_trials", in_process_trials)
    monkeypatch.setenv("SWEEP_TEST_FAIL", "1")
    (tmp_path / "lr_search.yaml").write_text(RANDOM)
    spec = sw.load_sweep(tmp_path / "lr_search.yaml")
    folder, results = sw.run_local_sweep(spec, count=4, seed=3, out_dir=tmp_path / "r", progress=False,
                                         job="tests.test_sweep:flaky_job", overrides=["ppo.n_epochs=3"])
    assert [r.status for r in results] == ["finished", "failed", "finished", "finished"]
    planned = sw.random_trials(spec, 4, seed=3)
    assert [r.params for r in results] == planned
    # the sweep was killed while trial 3 ran: its record is lost, its line torn, its run folder left "running"
    log = folder / "trials.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:3]) + '{"index": 3, "par')
    summary_path = Path(results[3].run_dir) / "summary.json"
    summary_path.write_text(json.dumps(dict(json.loads(summary_path.read_text()), status="running")))
    monkeypatch.delenv("SWEEP_TEST_FAIL")
    rerun = []
    _, resumed = sw.resume_local_sweep(folder, progress=False, on_result=rerun.append)
    assert sorted(r.index for r in rerun) == [1, 3]
    assert [r.params for r in resumed] == planned and all(r.status == "finished" for r in resumed)
    assert resumed[0] == results[0] and resumed[2] == results[2]
    assert json.loads(summary_path.read_text())["status"] == "interrupted"
    config = (Path(resumed[1].run_dir) / "config.yaml").read_text()
    assert "n_epochs: 3" in config and "group: lr_search" in config  # stored overrides and group reapplied
    assert (folder / "results.md").read_text().startswith("## sweep lr_search.yaml: random")
    assert len(log.read_text().splitlines()) == 6  # 3 kept, the torn line, 2 reruns
    with open(folder / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    # nothing left to rerun: the results stand
    rerun.clear()
    assert sw.resume_local_sweep(folder, progress=False, on_result=rerun.append)[1] == resumed and not rerun


def test_resume_bayes_replays_finished_trials_and_retries_failed_ones(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    monkeypatch.setattr(sw, "run_trials", in_process_trials)
    monkeypatch.setenv("SWEEP_TEST_FAIL", "1")
    spec = sw.load_sweep(_write_sweep(tmp_path, BAYES))
    folder, results = sw.run_local_sweep(spec, count=4, seed=1, out_dir=tmp_path / "b", progress=False,
                                         job="tests.test_sweep:flaky_job")
    assert [r.status for r in results] == ["finished", "failed", "finished", "finished"]
    log = folder / "trials.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:3]))  # trial 3 never recorded
    monkeypatch.delenv("SWEEP_TEST_FAIL")
    _, resumed = sw.resume_local_sweep(folder, progress=False)
    assert [r.status for r in resumed] == ["finished"] * 4
    assert resumed[0] == results[0] and resumed[2] == results[2]
    assert resumed[1].params == results[1].params  # the failed trial retried with its own parameters
    lr, kl = resumed[3].params["ppo.learning_rate"], resumed[3].params["kl.coef"]
    assert 1e-5 <= lr <= 5e-3 and kl in (0.0, 0.05, 0.5)
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [float(r["eval/return"]) for r in rows] == sorted((r.value for r in resumed), reverse=True)


def test_resume_errors_name_the_value_and_what_is_valid(tmp_path, monkeypatch, capsys):
    with pytest.raises(sw.SweepError, match=r"--resume '.*nowhere' is not a local sweep folder"):
        sw.resume_local_sweep(tmp_path / "nowhere")
    monkeypatch.setattr(sw, "run_trials", in_process_trials)
    sweep_file = _write_sweep(tmp_path, RANDOM)
    folder, _ = sw.run_local_sweep(sw.load_sweep(sweep_file), count=2, out_dir=tmp_path / "r", progress=False,
                                   job="tests.test_sweep:quadratic_job", overrides=["seed=5"])
    for kwargs, message in [
        ({"count": 3}, "--count 3 differs from the sweep's stored --count 2; drop --count"),
        ({"seed": 1}, "--seed 1 differs from the sweep's stored --seed 0; drop --seed"),
        ({"overrides": ["seed=6"]}, "overrides seed=6 differ from the sweep's stored overrides (seed=5); drop them"),
        ({"count": 0}, "--count must be >= 1; got 0"),
    ]:
        with pytest.raises(sw.SweepError, match=re.escape(message)):
            sw.resume_local_sweep(folder, **kwargs)
    sw.resume_local_sweep(folder, count=2, seed=0, overrides=["seed=5"], progress=False)  # repeating them is fine
    for extra, message in [([str(sweep_file)], f"drop the sweep FILE '{sweep_file}'"),
                           (["--out", "x"], "drop --out x"), (["--backend", "wandb"], "drop --backend wandb")]:
        assert cli.main(["sweep", "--resume", str(folder), *extra]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["sweep", "--resume", str(tmp_path)]) == 2
    assert f"--resume {str(tmp_path)!r} is not a local sweep folder" in capsys.readouterr().err
    with pytest.raises(sw.SweepError, match="already holds a sweep .*`longrec sweep --resume"):
        sw.run_local_sweep(sw.load_sweep(sweep_file), count=2, out_dir=folder, progress=False)
    (folder / "sweep.yaml").write_text(RANDOM.replace("seed: {value: 7}", "seed: {value: 8}"))
    with pytest.raises(sw.SweepError, match="sweep.yaml changed since the sweep started"):
        sw.resume_local_sweep(folder)


def test_count_below_one_is_an_error_before_anything_runs(tmp_path, capsys):
    spec = sw.load_sweep(_write_sweep(tmp_path, GRID))
    with pytest.raises(sw.SweepError, match=r"--count must be >= 1; got 0"):
        sw.run_local_sweep(spec, count=0, out_dir=tmp_path / "o", progress=False)
    assert cli.main(["sweep", "tiny", "--count", "-1", "--out", str(tmp_path / "s")]) == 2
    assert "--count must be >= 1; got -1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()
    with pytest.raises(sw.SweepError, match="'run_cap' must be an integer >= 1; got 0"):
        sw.load_sweep(_write_sweep(tmp_path, GRID + "run_cap: 0\n"))


def test_numbers_yaml_reads_as_text_take_the_config_keys_type(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-2 (no dot) as the string "1e-2"."""
    spec = sw.load_sweep(_write_sweep(tmp_path, """\
method: grid
parameters:
  ppo.learning_rate: {values: [1e-4, 1e-2]}
  ppo.n_epochs: {value: 1e1}
"""))
    assert spec.raw["parameters"]["ppo.learning_rate"]["values"] == ["1e-4", "1e-2"]  # what YAML gave
    trials = sw.grid_trials(spec)
    assert trials == [{"ppo.learning_rate": 1e-4, "ppo.n_epochs": 10}, {"ppo.learning_rate": 1e-2, "ppo.n_epochs": 10}]
    assert [type(v) for v in trials[0].values()] == [float, int]
    spec = sw.load_sweep(_write_sweep(tmp_path, """\
method: random
metric: {name: eval/return}
parameters:
  ppo.learning_rate: {min: 1e-5, max: 1e-2, distribution: log_uniform_values}
"""))
    assert (spec.parameters["ppo.learning_rate"]["min"], spec.parameters["ppo.learning_rate"]["max"]) == (1e-5, 1e-2)
    assert all(1e-5 <= t["ppo.learning_rate"] <= 1e-2 for t in sw.random_trials(spec, 20))
    with pytest.raises(sw.SweepError, match=r"'env.kwargs.num_items': value '1e3' is text .* write it with a dot"):
        sw.load_sweep(_write_sweep(tmp_path, "method: grid\nparameters: {env.kwargs.num_items: {values: [1e3]}}\n"))
    with pytest.raises(sw.SweepError, match=r"'kl.coef': min='low' must be a number"):
        sw.load_sweep(_write_sweep(tmp_path, "method: random\nmetric: {name: x}\n"
                                             "parameters: {kl.coef: {min: low, max: 1.0}}\n"))
