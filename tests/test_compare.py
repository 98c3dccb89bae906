"""compare: aggregation across seeds (Student-t CI), Markdown/CSV tables, PNG plots, clear errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from agents.stats import t_ci95
from experiments import cli
from experiments.compare import CompareError, aggregate, band, compare, load_records
from experiments.config import load_config
from experiments.run import Run

T_975_DF1 = 12.706204736174707  # Student t quantile, 1 degree of freedom
T_975_DF2 = 4.302652729911275


def make_run(root: Path, seed: int, final_return: float, ctr: float, *, env: str = "longrec/Video-v0",
             agent: str = "ce_ppo_kl", curve: tuple[float, ...] = (1.0, 2.0, 3.0),
             baselines: dict | None = None, name: str = "") -> Path:
    cfg = load_config("smoke", [f"seed={seed}", f"env.id={env}", f"agent={agent}", f"name={name}"])
    with Run.create(cfg, job_type="train", root=root, name=f"{agent}-{seed}-{env.split('/')[-1]}") as run:
        for i, value in enumerate(curve):
            run.log({"charts/episodic_return": value}, step=100 * (i + 1))
        run.update_summary(metrics={"eval/return": final_return, "eval/return_ci95": 0.5, "eval/ctr": ctr},
                           agents=baselines or {})
    return run.path


def test_two_runs_give_the_t_interval_and_files(tmp_path):
    runs = tmp_path / "runs"
    a = make_run(runs, 0, 10.0, 0.2, curve=(1.0, 2.0, 3.0),
                 baselines={"myopic": {"return": 6.0, "return_ci95": 0.4, "ctr": 0.5}})
    b = make_run(runs, 1, 14.0, 0.4, curve=(3.0, 4.0, 5.0),
                 baselines={"myopic": {"return": 8.0, "return_ci95": 0.4, "ctr": 0.7}})
    result = compare([a, b], tmp_path / "out")
    stat = result.stats["ce_ppo_kl"]["return"]
    assert (stat.mean, stat.n) == (12.0, 2)
    # sd of (10, 14) = 2*sqrt(2); half-width = t(0.975, 1) * sd / sqrt(2) = 2 t
    assert stat.ci95 == pytest.approx(2 * T_975_DF1)
    assert result.stats["ce_ppo_kl"]["ctr"].mean == pytest.approx(0.3)
    myopic = result.stats["myopic"]["return"]
    assert (myopic.mean, myopic.ci95) == (7.0, pytest.approx(T_975_DF1))
    # ordering by long-term return, table and CSV agree
    assert result.metrics[:2] == ["return", "ctr"]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| ce_ppo_kl | 2 | 12.0 ± 25.4 | 0.300 ± 1.271 |" in md
    assert md.index("ce_ppo_kl") < md.index("myopic")
    with open(tmp_path / "out" / "compare.csv") as fh:
        rows = {(r["agent"], r["metric"]): r for r in csv.DictReader(fh)}
    assert float(rows[("ce_ppo_kl", "return")]["mean"]) == 12.0
    assert float(rows[("ce_ppo_kl", "return")]["ci95"]) == pytest.approx(2 * T_975_DF1)
    assert rows[("myopic", "ctr")]["n"] == "2"
    for name in ("learning_curves.png", "final_metrics.png"):
        png = tmp_path / "out" / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_single_seed_uses_the_within_run_interval(tmp_path):
    run = make_run(tmp_path, 0, 10.0, 0.2)
    stats = aggregate(load_records([run])[0])
    assert stats["ce_ppo_kl"]["return"].ci95 == 0.5  # the evaluator's CI over users
    assert math.isnan(stats["ce_ppo_kl"]["ctr"].ci95)


def test_t_interval_and_band_match_hand_computation():
    mean, half = t_ci95([1.0, 2.0, 6.0])
    assert mean == 3.0
    assert half == pytest.approx(T_975_DF2 * math.sqrt(7.0) / math.sqrt(3.0))
    assert math.isnan(t_ci95([4.0])[1])
    import numpy as np

    steps = np.array([0.0, 10.0])
    nan = np.full(2, np.nan)
    grid, m, h = band([(steps, np.array([0.0, 10.0]), nan), (steps, np.array([2.0, 12.0]), nan)], num_points=3)
    assert grid.tolist() == [0.0, 5.0, 10.0] and m.tolist() == [1.0, 6.0, 11.0]
    assert h == pytest.approx(np.full(3, T_975_DF1))
    # one run keeps the CI it logged (over its held-out users)
    _, m1, h1 = band([(steps, np.array([3.0, 4.0]), np.array([0.5, 0.25]))])
    assert m1.tolist() == [3.0, 4.0] and h1.tolist() == [0.5, 0.25]


def test_grouping_by_config_key_and_sweep_folders(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(sweep, seed, 10.0 + seed, 0.1)
    result = compare([sweep], tmp_path / "o", by="seed")
    assert set(result.stats) == {"ce_ppo_kl (seed=0)", "ce_ppo_kl (seed=1)"}
    with pytest.raises(CompareError, match="--by 'ppo.kl_cof': not a config key"):
        compare([sweep], tmp_path / "o2", by="ppo.kl_cof")


def test_incompatible_and_empty_inputs_say_why(tmp_path):
    make_run(tmp_path / "mixed", 0, 1.0, 0.1, env="longrec/Video-v0")
    make_run(tmp_path / "mixed", 1, 1.0, 0.1, env="longrec/News-v0")
    with pytest.raises(CompareError, match=r"runs are incompatible: they use different environments") as info:
        compare([tmp_path / "mixed"], tmp_path / "o")
    assert "longrec/News-v0: 1 run(s) (ce_ppo_kl-1-News-v0)" in str(info.value)
    assert "longrec/Video-v0: 1 run(s) (ce_ppo_kl-0-Video-v0)" in str(info.value)
    assert "--allow-mixed-envs" in str(info.value)
    assert compare([tmp_path / "mixed"], tmp_path / "o", allow_mixed_envs=True).env == "mixed environments"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no runs found under .*empty"):
        compare([tmp_path / "empty"], tmp_path / "o")
    cfg = load_config("smoke")
    with pytest.raises(RuntimeError):
        with Run.create(cfg, root=tmp_path / "failed"):
            raise RuntimeError("boom")
    with pytest.raises(CompareError, match=r"none of the 1 run\(s\) found is finished .*failed"):
        compare([tmp_path / "failed"], tmp_path / "o")


def test_cli_compare_prints_table_and_reports_errors(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, 0, 10.0, 0.2)
    make_run(runs, 1, 14.0, 0.4)
    assert cli.main(["compare", str(runs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "compare.csv" in out and (runs / "compare" / "plots" / "final_metrics.png").exists()
    assert cli.main(["compare", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_runs_of_different_agents_never_share_a_row_and_the_experiment_is_a_column(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, 0, 10.0, 0.2, name="smoke", baselines={"random": {"return": 2.0, "ctr": 0.1}})
    make_run(runs, 1, 14.0, 0.4, name="smoke")
    make_run(runs, 2, 12.0, 0.3, name="quickstart")
    make_run(runs, 0, 4.0, 0.1, agent="random", name="smoke", curve=())
    result = compare([runs], tmp_path / "out", reps=100)
    # two ce_ppo_kl trainings and a random evaluation all named "smoke" used to pool into one "smoke" row (n=3)
    assert set(result.stats) == {"ce_ppo_kl", "random"}
    assert (result.stats["ce_ppo_kl"]["return"].mean, result.stats["ce_ppo_kl"]["return"].n) == (12.0, 3)
    # random: its own evaluation run and the baseline evaluated beside the first training
    assert (result.stats["random"]["return"].mean, result.stats["random"]["return"].n) == (3.0, 2)
    assert result.experiments == {"ce_ppo_kl": "smoke, quickstart", "random": "smoke"}
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| agent | experiment | n | return | ctr |" in md
    assert "| ce_ppo_kl | smoke, quickstart | 3 | 12.0 ± " in md and "| random | smoke | 2 | 3.000 ± " in md
    with open(tmp_path / "out" / "compare.csv") as fh:
        rows = {(r["agent"], r["metric"]): r for r in csv.DictReader(fh)}
    assert rows[("ce_ppo_kl", "return")]["experiment"] == "smoke, quickstart"
    assert rows[("random", "ctr")]["experiment"] == "smoke" and rows[("random", "ctr")]["n"] == "2"
    with open(tmp_path / "out" / "compare_robust.csv") as fh:
        robust_rows = {r["agent"]: r for r in csv.DictReader(fh)}
    assert robust_rows["ce_ppo_kl"]["experiment"] == "smoke, quickstart" and robust_rows["random"]["reference"] == "random"
    assert float(robust_rows["ce_ppo_kl"]["p_improvement"]) == 1.0  # every ce_ppo_kl run beats every random one

    # --by experiment splits an agent's runs by name; the baselines evaluated beside a run stay rows by name
    split = compare([runs], tmp_path / "out2", by="experiment", reps=100)
    assert set(split.stats) == {"ce_ppo_kl (experiment=smoke)", "ce_ppo_kl (experiment=quickstart)",
                                "random (experiment=smoke)", "random"}
    assert split.stats["ce_ppo_kl (experiment=smoke)"]["return"].mean == 12.0
    assert split.experiments["ce_ppo_kl (experiment=quickstart)"] == "quickstart"
    with pytest.raises(CompareError, match=r"--reference 'ce_ppo_kl' names 2 rows \(ce_ppo_kl \(experiment=quick"):
        compare([runs], tmp_path / "out3", by="experiment", reference="ce_ppo_kl", reps=100)
    # a reference given by agent name resolves to the one row of that agent
    one = compare([runs / "ce_ppo_kl-2-Video-v0", runs / "random-0-Video-v0"], tmp_path / "out4", by="run",
                  reference="random", reps=100)
    assert one.robust.reference == "random (run=random-0-Video-v0)"
    assert set(one.stats) == {"ce_ppo_kl (run=ce_ppo_kl-2-Video-v0)", "random (run=random-0-Video-v0)"}


def test_a_run_named_like_another_agent_keeps_its_own_row(tmp_path):
    # experiment "myopic" of a ce_ppo_kl run, which also evaluated the myopic baseline
    make_run(tmp_path / "runs", 0, 10.0, 0.2, name="myopic", baselines={"myopic": {"return": 6.0, "ctr": 0.5}})
    stats = compare([tmp_path / "runs"], tmp_path / "out", reps=100).stats
    assert set(stats) == {"ce_ppo_kl", "myopic"}
    assert (stats["ce_ppo_kl"]["return"].mean, stats["myopic"]["return"].mean) == (10.0, 6.0)
    assert stats["myopic"]["return"].n == 1


def test_cli_compare_rejects_what_no_run_logged_before_writing(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, 0, 10.0, 0.2, curve=(1.0, 2.0))
    make_run(runs, 1, 14.0, 0.4, curve=(3.0, 4.0))
    cases = [("--curve-metric", "charts/nope", "--curve-metric 'charts/nope' is logged by none of the 2 runs; "
              "available: charts/episodic_return"),
             ("--metrics", "return,foo", "--metrics 'foo' is a metric of none of the 2 runs; available: return, ctr"),
             ("--metrics", ",", "--metrics names no metric; available: return, ctr"),
             ("--metric", "nope", "--metric 'nope' is not a metric of these runs; available: return, ctr")]
    for option, value, message in cases:
        assert cli.main(["compare", str(runs), option, value, "--quiet"]) == 2, option
        assert cli.main(["compare", str(runs), "--out", str(tmp_path / "out"), option, value, "--quiet"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"longrec compare: error: {message}"] * 2
        assert not (runs / "compare").exists() and not (tmp_path / "out").exists()
    # the default curve falls back to the finished-episode return; named ones that exist are plotted
    assert cli.main(["compare", str(runs), "--out", str(tmp_path / "ok"), "--curve-metric", "charts/episodic_return",
                     "--metrics", "ctr", "--quiet", "--bootstrap-reps", "100"]) == 0
    assert (tmp_path / "ok" / "plots" / "learning_curves.png").exists()
    assert (tmp_path / "ok" / "plots" / "final_metrics.png").exists()


def make_seeded_runs(root: Path, agent: str, lift: float, seeds=range(5), eval_seed: int = 1000) -> list[Path]:
    """Runs of ``agent`` on 5 seeds, each evaluated on the same 50 users (eval.seeds) as ``pctr_greedy`` beside
    it, with per-user returns: the user's level (shared by every agent) + ``lift`` + noise."""
    import numpy as np

    from experiments.jobs import PER_USER_FILE, save_per_user

    paths = []
    for seed in seeds:
        users = np.random.default_rng(eval_seed).gamma(2.0, 40.0, size=50)
        own = users + lift + np.random.default_rng([seed, 1]).normal(0.0, 5.0, 50)
        start = users + np.random.default_rng([seed, 2]).normal(0.0, 5.0, 50)
        cfg = load_config("smoke", [f"seed={seed}", f"agent={agent}", "name=", f"eval.seeds=[{eval_seed}]"])
        with Run.create(cfg, job_type="train", root=root, name=f"{agent}-{seed}-{eval_seed}") as run:
            save_per_user(run.path / PER_USER_FILE, {f"{agent}/return": own, "pctr_greedy/return": start})
            run.update_summary(metrics={"eval/return": float(own.mean())},
                               agents={"pctr_greedy": {"return": float(start.mean())}})
        paths.append(run.path)
    return paths


def test_five_seeds_of_two_agents_give_iqm_improvement_paired_difference_and_plots(tmp_path):
    import numpy as np

    from agents.stats import paired_difference
    from experiments.jobs import load_per_user

    runs = make_seeded_runs(tmp_path / "runs", "ce_ppo", lift=20.0) + make_seeded_runs(tmp_path / "runs", "ppo_scratch",
                                                                                        lift=5.0)
    result = compare([tmp_path / "runs"], tmp_path / "out", reference="ppo_scratch", reps=300)
    rows = {row.agent: row for row in result.robust.rows}
    assert result.robust.reference == "ppo_scratch" and set(rows) == {"ce_ppo", "ppo_scratch", "pctr_greedy"}
    assert rows["ce_ppo"].runs == 5 and rows["ce_ppo"].iqm.low <= rows["ce_ppo"].iqm.value <= rows["ce_ppo"].iqm.high
    assert rows["ce_ppo"].improvement.value == 1.0 and rows["pctr_greedy"].improvement.value < 0.5
    # paired per user with ppo_scratch's run of the same seed (the same 50 users): the hand computation
    treated = [load_per_user(p)["ce_ppo/return"] for p in runs[:5]]
    control = [load_per_user(p)["ppo_scratch/return"] for p in runs[5:]]
    expected = paired_difference(treated, control)
    assert rows["ce_ppo"].paired.diff == pytest.approx(expected.diff) and len(rows["ce_ppo"].paired.per_seed) == 5
    assert rows["ce_ppo"].paired.diff - rows["ce_ppo"].paired.ci95 > 10  # lift 15 apart, user effects paired away
    assert rows["ppo_scratch"].improvement is None and rows["ppo_scratch"].paired is None
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "### return: robust aggregates against ppo_scratch" in md and "| ce_ppo | 5 |" in md
    assert "P(agent > ppo_scratch)" in md and "(5 pairs)" in md and "(reference)" in md
    with open(tmp_path / "out" / "compare_robust.csv") as fh:
        table = {r["agent"]: r for r in csv.DictReader(fh)}
    assert float(table["ce_ppo"]["p_improvement"]) == 1.0 and table["ce_ppo"]["paired_runs"] == "5"
    assert float(table["ce_ppo"]["iqm"]) == pytest.approx(rows["ce_ppo"].iqm.value)
    for name in ("performance_profile.png", "final_metrics.png"):
        png = tmp_path / "out" / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert np.isfinite(result.robust.profile.fractions["ce_ppo"]).all()
    # the default reference is the CE start; an unknown one names the choices
    assert compare([tmp_path / "runs"], tmp_path / "out2", reps=100).robust.reference == "pctr_greedy"
    with pytest.raises(CompareError, match="--reference 'nope' is not among the compared agents: ce_ppo, pctr"):
        compare([tmp_path / "runs"], tmp_path / "out3", reference="nope")
    with pytest.raises(CompareError, match="--metric 'nope' is not a metric of these runs; available: return"):
        compare([tmp_path / "runs"], tmp_path / "out3", metric="nope")
    with pytest.raises(CompareError, match="--bootstrap-reps 5: use at least 10"):
        compare([tmp_path / "runs"], tmp_path / "out3", reps=5)


def test_runs_on_other_users_are_not_paired(tmp_path):
    make_seeded_runs(tmp_path / "runs", "ce_ppo", lift=20.0, eval_seed=1000)
    make_seeded_runs(tmp_path / "runs", "ppo_scratch", lift=5.0, eval_seed=2000)
    result = compare([tmp_path / "runs"], tmp_path / "out", reference="ppo_scratch", reps=100)
    rows = {row.agent: row for row in result.robust.rows}
    assert rows["ce_ppo"].paired is None and rows["ce_ppo"].improvement.value == 1.0  # unpaired statistics stay


def test_compare_logs_its_tables_and_plots_to_wandb_offline(tmp_path, monkeypatch):
    import warnings

    monkeypatch.setenv("WANDB_MODE", "offline")
    make_seeded_runs(tmp_path / "runs", "ce_ppo", lift=20.0, seeds=(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed W&B call would only warn
        assert cli.main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--wandb", "--quiet",
                                 "--bootstrap-reps", "100"]) == 0
    (offline,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    logged = {p.name.split("_")[0] for p in offline.glob("files/media/*/compare/*")}
    assert {"agents", "robust", "performance", "final"} <= logged


def test_pretraining_runs_get_their_own_row(tmp_path):
    make_run(tmp_path / "runs", 0, 10.0, 0.2)
    cfg = load_config("smoke", ["name="])
    with Run.create(cfg, job_type="pretrain", root=tmp_path / "runs", name="pretrain-0") as run:
        run.update_summary(metrics={"pretrain/valid_loss": 2.5})
    stats = compare([tmp_path / "runs"], tmp_path / "out").stats
    assert set(stats) == {"ce_ppo_kl", "ce_ppo_kl (pretrain)"}
    assert "valid_loss" not in str(stats["ce_ppo_kl"]) and stats["ce_ppo_kl (pretrain)"]["pretrain/valid_loss"].n == 1


def test_runs_older_than_a_key_group_under_its_default_and_labels_keep_the_privileged_mark(tmp_path):
    import yaml

    from agents.registry import display_name

    run = make_run(tmp_path / "runs", 0, 10.0, 0.2)
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["ppo"]["keep_best"]  # written before ppo.keep_best existed
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert set(compare([run], tmp_path / "out", by="ppo.keep_best").stats) == {"ce_ppo_kl (ppo.keep_best=False)"}
    assert display_name("oracle (seed=1)") == "oracle† (seed=1)" and display_name("oracle") == "oracle†"
    assert display_name("ce_ppo (seed=1)") == "ce_ppo (seed=1)"
