"""Long-term evaluation: determinism, final satisfaction, CIs, metric ranges, agent ordering, table marks."""

from __future__ import annotations

import math

import numpy as np
import pytest

import envs
from agents.baselines import MyopicAgent, RandomAgent
from agents.evaluate import evaluate_agent, format_row, main, run_lives
from agents.registry import PRIVILEGED_MARK
from agents.stats import coverage_ci95, mean_ci95, t_ci95


def without_timing(row):
    return {key: value for key, value in row.items() if key != "seconds"}


def test_evaluation_is_deterministic_for_a_seed():
    first = evaluate_agent("random", "longrec/Video-v0", num_users=64, seeds=[3], progress=False)
    again = evaluate_agent("random", "longrec/Video-v0", num_users=64, seeds=[3], progress=False)
    other = evaluate_agent("random", "longrec/Video-v0", num_users=64, seeds=[4], progress=False)
    assert without_timing(first.row) == without_timing(again.row)
    np.testing.assert_array_equal(first.records[0].values["return"], again.records[0].values["return"])
    assert first.row["return"] != other.row["return"]


@pytest.mark.parametrize("env_id", ["longrec/News-v0", "longrec/MovieLens-v0"])
def test_final_satisfaction_is_the_hidden_state_after_the_last_step_of_each_life(env_id):
    core = envs.make_core(env_id, num_users=24)
    truth = np.full(24, np.nan)
    replace_users = core._reset_users  # what a step calls to replace the users whose episode ended

    def spy(mask):  # their satisfaction, once per first life
        first_life = mask & np.isnan(truth)
        truth[first_life] = core.hidden_state()["satisfaction"][first_life]
        replace_users(mask)

    core._reset_users = spy
    record = run_lives(MyopicAgent(core), core, seed=3)
    assert not np.isnan(truth).any()
    np.testing.assert_array_equal(record.values["final_satisfaction"], truth)
    assert "final_satisfaction_exact" not in evaluate_agent("random", "longrec/News-v0", num_users=2, progress=False).row


def test_metric_ranges_and_row_keys():
    result = evaluate_agent("oracle", "longrec/Video-v0", num_users=40, seeds=[0, 1], progress=False)
    row = result.row
    for metric in ("return", "sessions", "return_rate", "ctr", "consumption", "final_satisfaction",
                   "diversity", "coverage"):
        assert np.isfinite(row[metric]) and row[f"{metric}_ci95"] >= 0 and f"{metric}_seed_ci95" in row
    assert 0 <= row["ctr"] <= 1 and 0 <= row["return_rate"] <= 1 and 0 < row["coverage"] <= 1
    assert 1 / 5 <= row["diversity"] <= 1 and 0 <= row["final_satisfaction"] <= 1
    assert row["num_users"] == 40 and row["seeds"] == [0, 1]
    values = result.records[0].values
    # one session end per session lived; every session end but the last is followed by a return
    churned = values["return_rate"] < 1
    np.testing.assert_allclose(
        values["return_rate"][churned], (values["sessions"][churned] - 1) / values["sessions"][churned]
    )


def test_interest_evolution_lives_are_one_session():
    row = evaluate_agent("myopic", "longrec/InterestEvolution-v0", num_users=32, progress=False).row
    assert row["sessions"] == 1.0 and row["sessions_ci95"] == 0.0 and row["return_rate"] == 0.0


def test_non_privileged_agents_see_only_users_in_their_first_life():
    sizes = []

    class Recording(RandomAgent):
        def act(self, observation):
            sizes.append(len(observation["candidate_item_ids"]))
            return super().act(observation)

    core = envs.make_core("longrec/News-v0", num_users=30)
    record = run_lives(Recording(core.num_candidates, core.slate_size), core, seed=2)
    assert sizes[0] == 30 and sizes[-1] >= 1 and sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == record.steps == record.values["length"].sum()


def test_oracle_beats_random_and_myopic_on_video_by_a_margin():
    rows = {
        name: evaluate_agent(name, "longrec/Video-v0", num_users=300, seeds=[0], progress=False).row
        for name in ("random", "myopic", "oracle")
    }
    oracle = rows["oracle"]
    for name in ("random", "myopic"):
        assert oracle["return"] > 3 * rows[name]["return"]
        assert oracle["return"] - oracle["return_ci95"] > rows[name]["return"] + rows[name]["return_ci95"]
        assert oracle["sessions"] > rows[name]["sessions"] + 10
    assert rows["myopic"]["ctr"] > oracle["ctr"]  # the clickbait trap: more clicks, shorter lives


def test_confidence_intervals_by_hand():
    mean, half = mean_ci95(np.array([1.0, 2.0, 3.0, 4.0, np.nan]))
    assert mean == 2.5
    assert half == pytest.approx(1.96 * math.sqrt(5 / 3) / 2)
    assert mean_ci95(np.array([7.0])) == (7.0, 0.0)
    assert math.isnan(t_ci95([1.0])[1])
    # t(0.975, 2) = 4.302653
    assert t_ci95([1.0, 2.0, 3.0])[1] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    seen = np.zeros((4, 10), dtype=bool)
    seen[:, :5] = True  # every user saw the same 5 items: coverage 0.5 in every resample
    assert coverage_ci95(seen, np.random.default_rng(0)) == (0.5, 0.0)


def test_evaluate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_users=0"):
        evaluate_agent("random", "longrec/Video-v0", num_users=0)
    with pytest.raises(ValueError, match="seeds is empty"):
        evaluate_agent("random", "longrec/Video-v0", num_users=2, seeds=[])
    with pytest.raises(ValueError, match="unknown environment id"):
        evaluate_agent("random", "longrec/Nope-v0", num_users=2)


def test_tables_mark_privileged_agents(capsys):
    row = evaluate_agent("myopic", "longrec/Video-v0", num_users=4, progress=False).row
    assert format_row(row).startswith(f"myopic{PRIVILEGED_MARK}: return")
    assert format_row({**row, "agent": "random"}).startswith("random: return")
    main(["--agents", "popularity", "oracle", "--users", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("popularity: ") and lines[2].startswith(f"oracle{PRIVILEGED_MARK}: ")
    with pytest.raises(SystemExit):
        main(["--agents", "ce_ppo"])
