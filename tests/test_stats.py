"""``agents.stats``: confidence intervals and paired differences across seeds."""

import math
from pathlib import Path

import numpy as np
import pytest

from agents.stats import mean_ci95, paired_difference, t_ci95
from tests.benchmark_scripts import load_benchmark


def load_long_term():
    return load_benchmark("long_term")


def test_paired_difference_is_per_user_within_a_seed_then_across_seeds():
    rng = np.random.default_rng(0)
    users = rng.normal(100.0, 30.0, size=(3, 500))  # user effects shared by both agents of a seed
    treatment = [u + 5.0 + rng.normal(0, 1, 500) for u in users]
    control = list(users)
    result = paired_difference(treatment, control)
    per_seed = [np.mean(t - c) for t, c in zip(treatment, control, strict=True)]
    assert result.diff == pytest.approx(np.mean(per_seed))
    assert result.ci95 == pytest.approx(t_ci95(per_seed)[1])
    assert result.positive_in_every_seed and result.diff - result.ci95 > 4.0
    # pairing removes the user effects: the unpaired CI of one seed is ~30x wider
    assert result.per_seed[0][1] * 10 < mean_ci95(treatment[0])[1] + mean_ci95(control[0])[1]


def test_paired_difference_of_one_seed_uses_the_users_ci_and_checks_shapes():
    result = paired_difference([np.array([3.0, 1.0, 2.0])], [np.array([1.0, 1.0, 1.0])])
    assert result.diff == pytest.approx(1.0) and result.ci95 == pytest.approx(1.96 * 1.0 / math.sqrt(3))
    assert not paired_difference([np.array([1.0, -3.0])], [np.zeros(2)]).positive_in_every_seed
    with pytest.raises(ValueError, match="same users"):
        paired_difference([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError, match="same number"):
        paired_difference([np.zeros(3)], [])


def test_benchmark_seed_ranges_and_lists():
    import argparse
    long_term = load_long_term()
    assert long_term.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert long_term.parse_seeds("0,2,5") == [0, 2, 5] and long_term.parse_seeds("3") == [3]
    assert long_term.parse_seeds("0-1,1,7") == [0, 1, 7]
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds 'a-b'"):
        long_term.parse_seeds("a-b")


def test_long_term_passes_ppo_settings_to_every_ppo_agent():
    from experiments.config import ConfigError, load_config

    long_term = load_long_term()
    args = long_term.parse_args(["--ppo", "vf_coef=0.1", "--ppo", "max_grad_norm=5"])
    keys = long_term.agent_overrides(args, "ce_ppo", 0, Path("pretrained"))
    assert keys[-2:] == ["ppo.vf_coef=0.1", "ppo.max_grad_norm=5"]
    cfg = load_config("default", keys)
    assert (cfg.ppo.vf_coef, cfg.ppo.max_grad_norm, cfg.ppo.learning_rate) == (0.1, 5.0, 3e-4)
    assert "ppo.vf_coef=0.1" not in long_term.agent_overrides(args, "random", 0, None)
    with pytest.raises(SystemExit):
        long_term.parse_args(["--ppo", "vf_coef"])
    with pytest.raises(ConfigError, match="no_such_knob"):
        load_config("default", long_term.agent_overrides(long_term.parse_args(["--ppo", "no_such_knob=1"]), "ce_ppo", 0, None))


def test_long_term_passes_env_options_to_every_run():
    from experiments.config import load_config

    long_term = load_long_term()
    args = long_term.parse_args(["--env", "longrec/InterestEvolution-v0", "--env-kwarg", "history_length=60",
                                 "--env-kwarg", "duplicate_mode=penalty"])
    assert dict(args.env_kwarg) == {"history_length": 60, "duplicate_mode": "penalty"}
    cfg = load_config("default", long_term.common_overrides(args, 0, Path("runs")))
    assert cfg.env.kwargs == {"history_length": 60, "duplicate_mode": "penalty"}
    with pytest.raises(SystemExit):
        long_term.parse_args(["--env-kwarg", "history_length"])


def write_finished_runs(out: Path, lift: dict[str, float], noise_seed: int = 0) -> None:
    """Finished (seed, agent) records of a benchmark folder, as ``long_term.run_seed`` leaves them: seeds 0-2,
    each with 300 users shared by every agent (and every folder), each agent's returns lifted by ``lift``."""
    import json

    from experiments.jobs import save_per_user

    noise = np.random.default_rng(noise_seed)
    for seed in (0, 1, 2):
        base = np.random.default_rng(seed).gamma(2.0, 40.0, size=300)  # the seed's users: shared by every agent
        for agent, gain in lift.items():
            run = out / f"seed_{seed}" / "runs" / f"{agent}_{seed}"
            run.mkdir(parents=True)
            returns = base + gain + noise.normal(0, 5, size=300)
            save_per_user(run / "eval_per_user.npz", {f"{agent}/return": returns})
            (run / "summary.json").write_text(json.dumps({"env": "longrec/Video-v0", "agent": agent, "seed": seed,
                                                          "status": "finished", "metrics": {"eval/return": returns.mean()}}))
            if agent not in ("pctr_greedy", "completion_greedy", "random"):  # held-out curves of the learning agents
                curve = [{"step": step, "heldout/return": 100 + gain * step / 200} for step in (0, 100, 200)]
                (run / "metrics.jsonl").write_text("\n".join(json.dumps(row) for row in curve))
            row = {"return": returns.mean(), "return_ci95": 1.0, "ctr": 0.5, "retention": 0.8, "sessions": 9.0,
                   "final_satisfaction": 0.4}
            (out / f"seed_{seed}" / f"{agent}.json").write_text(json.dumps(
                {"agent": agent, "seed": seed, "run": str(run), "row": row, "steps": 200}))


def test_long_term_merge_pairs_fine_tuned_agents_with_their_start_and_with_rl_from_scratch(tmp_path, capsys):
    """The merge step on finished (seed, agent) records: paired differences per user, then across seeds."""
    import json

    long_term = load_long_term()
    write_finished_runs(tmp_path, {"pctr_greedy": 0.0, "ppo_scratch": 50.0, "ce_ppo": 80.0})
    summary = long_term.merge(long_term.parse_args(["--merge-only"]), tmp_path)
    paired = summary["paired"]["ce_ppo"]
    assert paired["vs"] == "pctr_greedy" and paired["seeds"] == [0, 1, 2] and paired["positive_in_every_seed"]
    assert paired["diff"] == pytest.approx(80.0, abs=2.0) and 0 < paired["ci95"] < 5
    assert paired["vs_scratch"]["diff"] == pytest.approx(30.0, abs=2.0) and paired["vs_scratch"]["positive_in_every_seed"]
    assert "ppo_scratch" not in summary["paired"]  # RL from scratch has no CE start to be paired with
    assert summary["agents"]["ce_ppo"]["steps_to_80pct"] == 200  # 100 + 80 * step / 200 first reaches 80% of 180 at 200
    # on scratch's clock (80% of its final 150 = 120): 140 at step 100 for ce_ppo, 125 at step 100 for scratch
    assert [summary["agents"][a]["steps_to_scratch_80pct"] for a in ("ce_ppo", "ppo_scratch")] == [100, 100]
    out = capsys.readouterr().out
    assert "ce_ppo - ppo_scratch (paired per user, 3 seed(s)): +" in out and json.loads(out.strip().splitlines()[-1]) == summary


def test_long_term_merge_pairs_each_agent_with_the_same_agent_of_another_folder(tmp_path, capsys):
    """``--paired-with``: an ablation run in its own folder (same seeds and users) is paired user by user."""
    long_term = load_long_term()
    write_finished_runs(tmp_path / "lever", {"pctr_greedy": 0.0, "ce_ppo": 110.0}, noise_seed=1)
    write_finished_runs(tmp_path / "control", {"pctr_greedy": 0.0, "ce_ppo": 80.0}, noise_seed=2)
    args = long_term.parse_args(["--merge-only", "--paired-with", str(tmp_path / "control")])
    other = long_term.merge(args, tmp_path / "lever")["paired"]["ce_ppo"]["vs_other_out"]
    assert other["out"] == str(tmp_path / "control") and other["seeds"] == [0, 1, 2] and other["positive_in_every_seed"]
    assert other["diff"] == pytest.approx(30.0, abs=2.0) and 0 < other["ci95"] < 5  # the shared users' spread cancels
    assert f"ce_ppo - ce_ppo of {tmp_path / 'control'} (paired per user, 3 seed(s)): +" in capsys.readouterr().out
    without = long_term.merge(long_term.parse_args(["--merge-only"]), tmp_path / "lever")
    assert "vs_other_out" not in without["paired"]["ce_ppo"]


# --------------------------------------------------------------------------- rliable aggregates


def test_iqm_is_the_interquartile_mean_with_a_bootstrap_interval_around_it():
    from scipy.stats import trim_mean

    from agents.stats import iqm_ci95

    runs = {"a": [1.0, 2.0, 3.0, 4.0, 100.0], "b": [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0]}
    result = iqm_ci95(runs, reps=500)
    assert result["a"].value == pytest.approx(trim_mean(runs["a"], 0.25))  # the outlier run barely moves it
    assert result["b"].value == pytest.approx(13.5)
    for name, interval in result.items():
        assert interval.low <= interval.value <= interval.high
        assert min(runs[name]) <= interval.low and interval.high <= max(runs[name])
    assert iqm_ci95(runs, reps=500) == result  # seeded: the same interval every time
    assert math.isnan(iqm_ci95({"one": [5.0]})["one"].low)


def test_probability_of_improvement_is_the_mann_whitney_share_of_winning_pairs():
    from agents.stats import probability_of_improvement

    x, y = [3.0, 4.0, 5.0], [1.0, 2.0, 3.0]
    result = probability_of_improvement(x, y, reps=500)
    assert result.value == pytest.approx(8.5 / 9)  # 3 vs 3 is a tie: half a win
    assert 0.0 <= result.low <= result.value <= result.high <= 1.0
    assert probability_of_improvement(y, x, reps=500).value == pytest.approx(0.5 / 9)
    assert probability_of_improvement(x, x, reps=500).value == pytest.approx(0.5)
    before = np.random.get_state()  # noqa: NPY002 (rliable draws from numpy's legacy global generator)
    probability_of_improvement(x, y, reps=50)
    after = np.random.get_state()  # noqa: NPY002
    assert (after[1] == before[1]).all() and after[2] == before[2]  # the caller's global stream is left as it was
    with pytest.raises(ValueError, match="runs on both sides"):
        probability_of_improvement([], y)


def test_performance_profile_counts_runs_above_each_threshold():
    from agents.stats import performance_profile

    profile = performance_profile({"a": [1.0, 2.0, 3.0, 4.0], "b": [3.0, 4.0, 5.0, 6.0]},
                                  taus=np.array([0.0, 2.5, 4.5, 10.0]), reps=200)
    assert profile.fractions["a"].tolist() == [1.0, 0.5, 0.0, 0.0]
    assert profile.fractions["b"].tolist() == [1.0, 1.0, 0.5, 0.0]
    assert (profile.lows["b"] <= profile.fractions["b"]).all() and (profile.fractions["b"] <= profile.highs["b"]).all()
    default = performance_profile({"a": [1.0, 2.0]}, reps=50)
    assert default.taus[0] < 1.0 and default.taus[-1] > 2.0 and len(default.taus) == 51


def test_paired_bootstrap_averages_seeds_per_user_then_resamples_users():
    from agents.stats import paired_bootstrap_ci95

    rng = np.random.default_rng(0)
    users = rng.gamma(2.0, 0.05, size=600)  # per-user NDCG-like levels shared by both models
    control = np.stack([users + rng.normal(0, 0.01, 600) for _ in range(3)])
    better = control + 0.01 + rng.normal(0, 0.01, control.shape)
    result = paired_bootstrap_ci95(better, control, reps=500)
    assert result.value == pytest.approx(float((better - control).mean()))
    assert result.excludes_zero and result.low > 0.008
    same = paired_bootstrap_ci95(control + rng.normal(0, 0.01, control.shape), control, reps=500)
    assert not same.excludes_zero
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap_ci95(np.zeros((3, 5)), np.zeros((2, 5)))


def test_long_term_merge_takes_completion_greedy_as_a_reference_not_as_a_fine_tuned_agent(tmp_path, capsys):
    """``completion_greedy`` starts from the CE policy's folder but learns nothing: it is the best non-privileged
    baseline here (above random), and only the RL agent is paired with the CE start."""
    long_term = load_long_term()
    write_finished_runs(tmp_path, {"pctr_greedy": 0.0, "random": 20.0, "completion_greedy": 60.0, "ce_ppo": 80.0})
    summary = long_term.merge(long_term.parse_args(["--merge-only"]), tmp_path)
    assert set(summary["paired"]) == {"ce_ppo"}
    paired = summary["paired"]["ce_ppo"]
    assert paired["best_baseline"] == "completion_greedy"
    assert paired["ratio_to_best_baseline"] == pytest.approx(summary["agents"]["ce_ppo"]["return"]
                                                             / summary["agents"]["completion_greedy"]["return"])
    versus = paired["vs_best_baseline"]  # paired per user: +20 by construction, the users' spread cancels
    assert versus["diff"] == pytest.approx(20.0, abs=2.0) and 0 < versus["ci95"] < 5 and versus["positive_in_every_seed"]
    assert "ce_ppo - completion_greedy (paired per user, 3 seed(s)): +" in capsys.readouterr().out
    assert summary["agents"]["completion_greedy"]["privileged"] is False


def test_long_term_item_statistics_flag_reaches_the_policy_config():
    from experiments.config import load_config

    long_term = load_long_term()
    on = long_term.policy_overrides(long_term.parse_args([]))
    off = long_term.policy_overrides(long_term.parse_args(["--item-statistics", "off"]))
    assert load_config("default", on).policy.item_statistics is True
    assert load_config("default", off).policy.item_statistics is False
    keys = long_term.agent_overrides(long_term.parse_args([]), "completion_greedy", 0, Path("pretrained"))
    assert "init_from=pretrained" in keys and not any(key.startswith("ppo.") for key in keys)
