"""Sweeps on Ray Tune: the sweep file in Tune's terms, the CLI's checks, and real sweeps on a local Ray of 2 CPUs."""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")
optuna = pytest.importorskip("optuna")

from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized  # noqa: E402

from experiments import cli  # noqa: E402
from experiments import sweep as sw  # noqa: E402
from experiments import sweep_ray as sr  # noqa: E402
from tests.test_sweep import BAYES, GRID, RANDOM  # noqa: E402

NESTED = """\
command: [longrec, train, --config, smoke]
method: bayes
metric: {name: eval/return, goal: minimize}
parameters:
  ppo:
    parameters:
      learning_rate: {min: 1.0e-5, max: 1.0e-2, distribution: log_uniform_values}
      n_epochs: {min: 1, max: 3}
      clip_range: {min: 0.1, max: 0.3, distribution: q_uniform, q: 0.05}
      ent_coef: {min: -9.0, max: -3.0, distribution: log_uniform}
  ppo.gamma: {min: 0.9, max: 0.99}
  kl.coef: {values: [0.0, 0.05, 0.5]}
  seed: {value: 7}
"""


def _spec(tmp_path: Path, body: str, validate_values: bool = True) -> sw.SweepSpec:
    path = tmp_path / "sweep.yaml"
    path.write_text(body)
    return sw.load_sweep(path, validate_values=validate_values)


def _state(spec: sw.SweepSpec, count: int | None = None, seed: int = 0) -> sw.SweepState:
    return sw.SweepState(count, seed, (), spec.job, "sha", spec.path.name)


def _suggestions(searcher: Searcher) -> list[dict]:
    out = []
    while (config := searcher.suggest(f"t{len(out)}")) != Searcher.FINISHED:
        out.append(config)
    return out


# --------------------------------------------------------------------------- the sweep file in Tune's terms (fast)


def test_tune_space_translates_every_distribution_and_keeps_dotted_keys(tmp_path):
    spec = _spec(tmp_path, NESTED, validate_values=False)  # (load_sweep checks log_uniform's exponent -9 as a value)
    space = sr.tune_space(spec)
    assert list(space) == ["ppo.learning_rate", "ppo.n_epochs", "ppo.clip_range", "ppo.ent_coef", "ppo.gamma",
                           "kl.coef", "seed"]  # W&B's nested `parameters:` arrive as dotted config keys
    lr, epochs, clip, ent, gamma, kl = (space[k] for k in list(space)[:6])
    assert isinstance(lr, Float) and isinstance(lr.get_sampler(), LogUniform)
    assert (lr.lower, lr.upper) == (1e-5, 1e-2)
    assert isinstance(epochs, Integer) and (epochs.lower, epochs.upper) == (1, 4)  # Tune's upper bound is exclusive
    assert isinstance(clip.get_sampler(), Quantized) and clip.get_sampler().q == 0.05
    assert (ent.lower, ent.upper) == pytest.approx((math.exp(-9.0), math.exp(-3.0)))  # log_uniform: exponents
    assert isinstance(gamma, Float) and (gamma.lower, gamma.upper) == (0.9, 0.99)
    assert isinstance(kl, Categorical) and kl.categories == [0.0, 0.05, 0.5]
    assert space["seed"] == 7  # a constant stays a value
    # what Optuna samples (Tune's OptunaSearch conversion): bounds inclusive, log scales, the q step
    dists = OptunaSearch.convert_search_space(space)
    assert dists["ppo.learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    assert dists["ppo.n_epochs"] == optuna.distributions.IntDistribution(1, 3)
    assert dists["ppo.clip_range"] == optuna.distributions.FloatDistribution(0.1, 0.3, step=0.05)
    assert dists["ppo.ent_coef"].log and dists["kl.coef"] == optuna.distributions.CategoricalDistribution(
        [0.0, 0.05, 0.5])
    assert "seed" not in dists
    with pytest.raises(sw.SweepError, match=r"does not support distribution 'normal' for 'ppo.gamma'"):
        sr.tune_space(_spec(tmp_path, "method: bayes\nmetric: {name: eval/return}\n"
                                      "parameters: {ppo.gamma: {mu: 0.95, sigma: 0.01}}\n"))


def test_grid_and_random_hand_out_the_local_backends_trials_and_skip_finished_ones(tmp_path):
    grid = _spec(tmp_path, GRID)
    search = sr.tune_search(grid, _state(grid))
    assert search.param_space == {} and search.num_samples == 4
    assert _suggestions(search.searcher) == [{sr.TRIAL_INDEX: i, **p} for i, p in enumerate(sw.grid_trials(grid))]
    random = _spec(tmp_path, RANDOM)
    planned = sw.random_trials(random, 5, seed=3)
    configs = _suggestions(sr.tune_search(random, _state(random, 5, seed=3)).searcher)
    assert [{k: v for k, v in c.items() if k != sr.TRIAL_INDEX} for c in configs] == planned
    # a resume: finished trials are not handed out again, the others keep their index and parameters
    previous = {i: sw.TrialResult(i, planned[i], "finished" if i in (0, 2) else "failed", None, -1.0)
                for i in range(4)}
    search = sr.tune_search(random, _state(random, 5, seed=3), previous)
    assert search.num_samples == 3
    assert _suggestions(search.searcher) == [{sr.TRIAL_INDEX: i, **planned[i]} for i in (1, 3, 4)]


def test_bayes_asks_optuna_within_bounds_retries_failed_trials_first_and_replays_finished_ones(tmp_path):
    spec = _spec(tmp_path, BAYES)
    state = _state(spec, 4, seed=1)
    fresh = sr.tune_search(spec, state)
    assert set(fresh.param_space) == {"ppo.learning_rate", "kl.coef", "seed"} and fresh.num_samples == 4
    fresh.searcher.set_search_properties("eval/return", "max", fresh.param_space)
    configs = _suggestions(fresh.searcher)
    assert [c[sr.TRIAL_INDEX] for c in configs] == [0, 1, 2, 3]
    for c in configs:
        assert 1e-5 <= c["ppo.learning_rate"] <= 5e-3 and c["kl.coef"] in (0.0, 0.05, 0.5)
    # a failed trial is a failed Optuna trial, not a value
    fresh.searcher.on_trial_complete("t0", {"eval/return": math.nan}, error=False)
    fresh.searcher.on_trial_complete("t1", {"eval/return": -0.5})
    study = fresh.searcher.optuna._ot_study
    assert [t.state.name for t in study.trials[:2]] == ["FAIL", "COMPLETE"] and study.trials[1].value == -0.5

    params = {i: {"ppo.learning_rate": 1e-4 * (i + 1), "kl.coef": 0.05, "seed": 7} for i in range(4)}
    previous = {0: sw.TrialResult(0, params[0], "finished", None, -0.3),
                1: sw.TrialResult(1, params[1], "failed", None, None, "boom"),
                2: sw.TrialResult(2, params[2], "finished", None, -0.1)}
    resumed = sr.tune_search(spec, state, previous)
    assert resumed.num_samples == 2
    resumed.searcher.set_search_properties("eval/return", "max", resumed.param_space)
    study = resumed.searcher.optuna._ot_study
    assert [t.value for t in study.trials if t.state.name == "COMPLETE"] == [-0.3, -0.1]  # finished: replayed
    retry, new = _suggestions(resumed.searcher)
    assert retry == {sr.TRIAL_INDEX: 1, **params[1]}  # trial 1 again, with its own parameters
    assert new[sr.TRIAL_INDEX] == 3 and 1e-5 <= new["ppo.learning_rate"] <= 5e-3


# --------------------------------------------------------------------------- CLI checks (before Ray or any folder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "auto"], "--address auto applies only to --backend ray; got --backend local "
                                "(backends: local, wandb, ray)"),
        (["--backend", "wandb", "--gpus-per-trial", "1"], "--gpus-per-trial 1 applies only to --backend ray; "
                                                          "got --backend wandb"),
        (["--backend", "ray", "--address", "auto", "--workers", "4"],
         "--workers 4 sizes a local Ray; with --address auto the cluster's CPUs decide"),
        (["--backend", "ray", "--address", "http://head"], "--address 'http://head': expected auto, HOST:PORT or "
                                                           "ray://HOST:PORT"),
        (["--backend", "ray", "--workers", "2", "--cpus-per-trial", "4"],
         "--cpus-per-trial 4 does not fit the local Ray of --workers 2 CPUs"),
        (["--backend", "ray", "--cpus-per-trial", "0"], "--cpus-per-trial must be > 0; got 0"),
        (["--backend", "ray", "--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0; got -1"),
        (["--backend", "ray", "--workers", "0"], "--workers must be >= 1; got 0"),
        (["--backend", "ray", "--sweep-id", "e/p/x"], "--sweep-id joins a W&B sweep: it needs --backend wandb; "
                                                      "got --backend ray"),
        (["--backend", "ray", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing answers at 127.0.0.1:1"),
    ],
)
def test_cli_rejects_bad_ray_flags_in_one_line_before_anything_starts(tmp_path, capsys, args, message):
    out = tmp_path / "s"
    assert cli.main(["sweep", "tiny", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_ray_flags_of_train_and_a_missing_ray(tmp_path, monkeypatch, capsys):
    fast = ["-c", "smoke_eval", "agent=random", "--runs-dir", str(tmp_path)]
    assert cli.main(["train", *fast, "--seeds", "0-1", "--cpus-per-trial", "2"]) == 2
    assert "--cpus-per-trial 2 applies only to --backend ray; got --backend local" in capsys.readouterr().err
    assert cli.main(["train", *fast, "--address", "auto"]) == 2
    assert "--address auto applies only to --backend ray" in capsys.readouterr().err
    assert not (tmp_path / "seeds").exists()
    monkeypatch.setattr(sr, "ray", None)  # as without the extra
    assert cli.main(["sweep", "tiny", "--backend", "ray", "--out", str(tmp_path / "s")]) == 2
    assert "--backend ray needs Ray Tune: pip install -e .[ray]" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_gpus_the_local_ray_lacks_fail_before_the_folder_exists(tmp_path):
    import ray

    if ray.is_initialized():  # pragma: no cover
        pytest.skip("a Ray is already running in this process")
    with pytest.raises(sw.SweepError, match=r"--gpus-per-trial 8: the local Ray found \d+ GPUs on this machine"):
        sr.run_ray_sweep(_spec(tmp_path, GRID), sr.RayOptions(workers=1, gpus_per_trial=8), out_dir=tmp_path / "s",
                         progress=False, job="tests.test_sweep:quadratic_job")
    assert not (tmp_path / "s").exists() and not ray.is_initialized()


# --------------------------------------------------------------------------- real sweeps on a local Ray


def test_cli_ray_sweep_runs_four_trials_records_the_failed_one_and_ranks_like_local(tmp_path, monkeypatch, capsys):
    """The 4-trial grid of test_sweep on a local Ray of 2 CPUs: trial 3 diverges, the others finish; then --resume."""
    monkeypatch.setattr(sr, "run_ray_sweep", functools.partial(sr.run_ray_sweep, job="tests.test_sweep:quadratic_job"))
    ray_results = Path.home() / "ray_results"  # Tune's default storage: nothing may land there
    before = sorted(ray_results.iterdir()) if ray_results.is_dir() else []
    folder = tmp_path / "s"
    sweep_file = tmp_path / "lr.yaml"
    sweep_file.write_text(GRID)
    assert cli.main(["sweep", str(sweep_file), "--backend", "ray", "--workers", "2", "--out", str(folder),
                     "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "3/4 finished" in captured.out
    assert "trial 3 failed: FloatingPointError: loss diverged" in captured.err
    assert f"longrec sweep --resume {folder}" in captured.err
    results = sw.read_trials(folder)
    assert [results[i].status for i in range(4)] == ["finished"] * 3 + ["failed"]
    for r in results.values():  # each trial an ordinary run folder in the sweep folder, with an absolute path
        run_dir = Path(r.run_dir)
        assert run_dir.is_absolute() and run_dir.parent == folder
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == r.status and summary["job_type"] == "trial"
        if r.status == "finished":
            assert r.value == pytest.approx(-((math.log10(r.params["ppo.learning_rate"]) + 3.4) ** 2))
            assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert "loss diverged at learning_rate=0.01" in (Path(results[3].run_dir) / "error.txt").read_text()
    # the same ranked table as the local backend's
    with open(folder / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["ppo.learning_rate"]) for r in rows] == pytest.approx([3e-4, 1e-3, 1e-4, 1e-2])
    assert [r["rank"] for r in rows] == ["1", "2", "3", ""]
    assert (folder / "results.md").read_text().startswith("## sweep lr.yaml: grid, maximize eval/return, 3/4 finished")
    # Tune's own files stay in the sweep folder
    assert sorted(p.name for p in (folder / "ray" / "tune-0").glob("trial-*")) == [f"trial-00{i}" for i in range(4)]
    assert (sorted(ray_results.iterdir()) if ray_results.is_dir() else []) == before
    state = json.loads((folder / "sweep_state.json").read_text())
    assert state["job"] == "tests.test_sweep:quadratic_job" and state["count"] is None
    # --resume on Ray reruns only the failed trial (it diverges again), in the same folder
    kept = {i: results[i] for i in range(3)}
    assert cli.main(["sweep", "--resume", str(folder), "--backend", "ray", "--workers", "2", "--quiet"]) == 1
    assert "3/4 finished" in capsys.readouterr().out
    after = sw.read_trials(folder)
    assert {i: after[i] for i in range(3)} == kept and after[3].status == "failed"
    assert after[3].run_dir != results[3].run_dir and len((folder / "trials.jsonl").read_text().splitlines()) == 5
    assert sorted(p.name for p in (folder / "ray").iterdir()) == ["tune-0", "tune-1"]


@pytest.mark.expensive
def test_ray_bayes_records_a_killed_and_a_failed_trial_and_resume_reruns_them(tmp_path, monkeypatch):
    """OptunaSearch on a local Ray: trial 1 raises, trial 2's process is SIGKILLed; a resume retries both."""
    monkeypatch.setenv("SWEEP_TEST_FAIL", "1")
    monkeypatch.setenv("SWEEP_TEST_KILL", "2")
    spec = _spec(tmp_path, BAYES)
    folder, results = sr.run_ray_sweep(spec, sr.RayOptions(workers=2), count=4, seed=1, out_dir=tmp_path / "b",
                                       progress=False, job="tests.test_sweep:flaky_job")
    assert [r.status for r in results] == ["finished", "failed", "failed", "finished"]
    assert results[1].error == "RuntimeError: trial 1 fails on purpose"
    assert re.match(r"Ray trial ended without a result \(\w*(Actor|Worker)\w*Error: ", results[2].error)
    assert json.loads((Path(results[2].run_dir) / "summary.json").read_text())["status"] == "failed"
    for r in results:
        lr, kl = r.params["ppo.learning_rate"], r.params["kl.coef"]
        assert 1e-5 <= lr <= 5e-3 and kl in (0.0, 0.05, 0.5) and r.params["seed"] == 7
        if r.status == "finished":
            assert r.value == pytest.approx(-((math.log10(lr) + 3.4) ** 2) - (kl - 0.05) ** 2)
    monkeypatch.delenv("SWEEP_TEST_FAIL")
    monkeypatch.delenv("SWEEP_TEST_KILL")
    rerun = []
    _, resumed = sr.resume_ray_sweep(folder, sr.RayOptions(workers=2), progress=False, on_result=rerun.append)
    assert sorted(r.index for r in rerun) == [1, 2] and all(r.status == "finished" for r in resumed)
    assert [r.params for r in resumed] == [r.params for r in results]  # retried with their own parameters
    assert resumed[0] == results[0] and resumed[3] == results[3]
    assert sorted(p.name for p in (folder / "ray").iterdir()) == ["tune-0", "tune-1"]
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [float(r["eval/return"]) for r in rows] == sorted((r.value for r in resumed), reverse=True)


@pytest.mark.expensive
def test_train_seeds_on_ray_is_one_run_per_seed_then_the_cross_seed_table(tmp_path, capsys):
    fast = ["-c", "smoke_eval", "agent=random", "eval.baselines=[popularity]", "eval.num_users=16",
            "env.kwargs.num_items=200", "logging.wandb=true"]
    assert cli.main(["train", *fast, "--seeds", "0-2", "--backend", "ray", "--workers", "2", "--runs-dir",
                     str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    (folder,) = (tmp_path / "seeds").iterdir()
    runs = sorted(p for p in folder.iterdir() if (p / "summary.json").exists())
    summaries = [json.loads((p / "summary.json").read_text()) for p in runs]
    assert sorted(s["seed"] for s in summaries) == [0, 1, 2] and {s["status"] for s in summaries} == {"finished"}
    assert {s["wandb"]["mode"] for s in summaries} == {"offline"}  # each trial its own W&B run
    assert all(list((p / "wandb").glob("offline-run-*")) for p in runs)
    assert "| popularity | 3 |" in out and f"seeds folder: {folder}" in out
    assert (folder / "compare" / "compare.md").exists() and (folder / "ray" / "tune-0").is_dir()
