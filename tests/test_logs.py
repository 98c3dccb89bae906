"""Logs of behaviour policies: the clickbait trap, round trip, the logging convention, agreement with evaluation."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from agents.baselines import make_baseline
from agents.evaluate import evaluate_agent
from agents.logs import behaviour_lives, generate_logs, load_logs

LONG_HORIZON_IDS = [i for i in envs.registered_ids() if "InterestEvolution" not in i]


@pytest.mark.parametrize("env_id", LONG_HORIZON_IDS)
def test_clickbait_trap_is_real(env_id):
    def lives(behaviour):
        values = behaviour_lives(envs.make_core(env_id, num_users=1000), behaviour, seed=0).values
        return values["return"].mean(), (values["ctr"] * values["length"]).sum() / values["length"].sum()

    myopic_return, myopic_ctr = lives("myopic")
    aware_return, aware_ctr = lives("quality_aware")
    assert myopic_ctr > aware_ctr + 0.03
    assert aware_return >= 1.3 * myopic_return


def test_logs_round_trip(tmp_path):
    path = tmp_path / "logs.npz"
    data = generate_logs("longrec/Video-v0", num_users=20, seed=0, path=path, behaviour="noisy_quality")
    assert [p.name for p in tmp_path.iterdir()] == ["logs.npz"]  # the atomic write left no temporary file
    loaded = load_logs(path)
    assert len(loaded) == len(data) > 20
    assert loaded.meta["behaviour"] == "noisy_quality" and loaded.meta["num_items"] == 2000
    for key in data.__dataclass_fields__:
        if key != "meta":
            np.testing.assert_array_equal(getattr(loaded, key), getattr(data, key))
            assert getattr(loaded, key).dtype == getattr(data, key).dtype
    rows = loaded.clicked_position >= 0
    np.testing.assert_array_equal(
        loaded.slate_item_ids[rows, loaded.clicked_position[rows]], loaded.clicked_item_id[rows]
    )
    np.testing.assert_array_equal(
        np.take_along_axis(loaded.candidate_item_ids, loaded.slate, 1), loaded.slate_item_ids
    )
    assert set(np.unique(loaded.user_id)) == set(range(20))
    again = generate_logs("longrec/Video-v0", num_users=20, seed=0, behaviour="noisy_quality")
    np.testing.assert_array_equal(again.reward, data.reward)


def test_log_errors(tmp_path):
    with pytest.raises(ValueError, match="behaviour='best' is not known; valid: .*'quality_aware'"):
        generate_logs("longrec/Video-v0", num_users=2, seed=0, behaviour="best")
    with pytest.raises(ValueError, match="num_users=0"):
        generate_logs("longrec/Video-v0", num_users=0, seed=0)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_logs(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", slate=np.zeros(3))
    with pytest.raises(ValueError, match="not a longrec log: missing arrays"):
        load_logs(tmp_path / "other.npz")


@pytest.mark.parametrize("behaviour", ["random", "noisy_quality"])
def test_logs_follow_the_logging_convention(behaviour):
    """The behaviour acts on every row, seeded ``[seed, 1]``; the rows of users in their first life are logged."""
    env_id, num_users, seed = "longrec/InterestEvolution-v0", 12, 4
    data = generate_logs(env_id, num_users=num_users, seed=seed, behaviour=behaviour)
    core = envs.make_core(env_id, num_users=num_users)
    agent = make_baseline(behaviour, core)
    observation = core.reset(seed=seed)
    agent.reset([seed, 1])
    alive = np.ones(num_users, dtype=bool)
    slates, rewards = [], []
    while alive.any():
        slate = agent.act(observation)
        result = core.step(slate)
        slates.append(slate[alive])
        rewards.append(result.reward[alive].astype(np.float32))
        alive &= ~(result.terminated | result.truncated)
        observation = result.observation
    np.testing.assert_array_equal(data.slate, np.concatenate(slates))
    np.testing.assert_array_equal(data.reward, np.concatenate(rewards))


def test_logged_lives_agree_with_evaluation():
    data = generate_logs("longrec/Video-v0", num_users=24, seed=5, behaviour="myopic")
    record = evaluate_agent("myopic", "longrec/Video-v0", num_users=24, seeds=[5], progress=False).records[0]
    np.testing.assert_array_equal(np.bincount(data.user_id, minlength=24), record.values["length"])
    logged_return = np.bincount(data.user_id, weights=data.reward, minlength=24)
    np.testing.assert_allclose(logged_return, record.values["return"], rtol=1e-5)
