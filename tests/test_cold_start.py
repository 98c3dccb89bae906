"""Cold start inside one catalog: new items held out of training, shown from day 1 on, and the split return."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from agents.evaluate import COLD_START_METRICS, evaluate_agent, format_row

DOMAIN_IDS = ["longrec/Video-v0", "longrec/Ecommerce-v0", "longrec/News-v0", "longrec/Music-v0",
              "longrec/Travel-v0"]
TRAINING = {"new_item_share": 0.2}
EVALUATION = {"new_item_share": 0.2, "new_candidate_share": 0.1}


def rollout(core: envs.BatchedSimulator, steps: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(candidates, users' days) before each step, under a fixed slate of the first K candidates."""
    observation = core.reset(seed=seed)
    slates = np.tile(np.arange(core.slate_size), (core.num_users, 1))
    trace = []
    for _ in range(steps):
        trace.append((observation["candidate_item_ids"], core.user_model.sessions(core._state)))
        result = core.step(slates)
        trace.append((result.reward, result.info["clicked_item_id"]))
        observation = result.observation
    return trace


@pytest.mark.parametrize("env_id", DOMAIN_IDS)
def test_off_by_default_leaves_trajectories_unchanged(env_id):
    plain = envs.make_core(env_id, num_users=8)
    off = envs.make_core(env_id, num_users=8, new_item_share=0.0, new_candidate_share=0.0, new_item_seed=5)
    assert not plain.is_new_item.any() and not off.is_new_item.any()
    for (a, b), (c, d) in zip(rollout(plain, 80), rollout(off, 80), strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert "return_new_clicks" not in evaluate_agent("random", env_id, num_users=4, progress=False).row


def test_a_fixed_seeded_share_of_the_catalog_is_new_and_the_catalog_is_the_same():
    plain, training, evaluation = (envs.make_core("longrec/Video-v0", **kwargs)
                                   for kwargs in ({}, TRAINING, EVALUATION))
    assert training.is_new_item.sum() == round(0.2 * plain.catalog.num_items) == 400
    np.testing.assert_array_equal(training.is_new_item, evaluation.is_new_item)  # train and evaluate alike
    assert training.catalog.fingerprint() == plain.catalog.fingerprint()  # same items under the same ids
    other_seed = envs.make_core("longrec/Video-v0", new_item_seed=1, **TRAINING).is_new_item
    assert (other_seed != training.is_new_item).any()
    smaller = envs.make_core("longrec/Video-v0", new_item_share=0.1).is_new_item
    assert not (smaller & ~training.is_new_item).any()  # nested: a larger share keeps the smaller one's items
    with pytest.raises(ValueError):
        training.is_new_item[0] = True  # read-only


def test_training_mode_never_offers_a_new_item():
    core = envs.make_core("longrec/Video-v0", num_users=64, **TRAINING)
    trace = rollout(core, 400)[::2]
    days = np.concatenate([day for _, day in trace])
    assert days.max() >= 3  # many users reached later days
    assert not any(core.is_new_item[candidates].any() for candidates, _ in trace)
    env = gym.make("longrec/Video-v0", **TRAINING)  # the single-user view too
    observation, _ = env.reset(seed=0)
    for _ in range(300):
        assert not env.unwrapped.core.is_new_item[observation["candidate_item_ids"]].any()
        observation, _, terminated, truncated, _ = env.step(np.arange(5))
        if terminated or truncated:
            observation, _ = env.reset()


def test_evaluation_mode_offers_new_items_from_day_one_on():
    core = envs.make_core("longrec/Video-v0", num_users=64, **EVALUATION)
    trace = rollout(core, 400)[::2]
    candidates = np.concatenate([c for c, _ in trace])
    days = np.concatenate([day for _, day in trace])
    new = core.is_new_item[candidates]
    assert (days == 0).sum() > 1000 and (days >= 1).sum() > 1000
    assert not new[days == 0].any()  # day 0: old items only
    np.testing.assert_array_equal(new[days >= 1].sum(axis=1), 2)  # 0.1 of 20 candidates, every later step
    assert new[days >= 1].mean() == pytest.approx(0.1)
    assert all(len(set(row)) == len(row) for row in candidates)
    assert (new[days >= 1].mean(axis=0) > 0.05).all()  # at random positions, not always the last ones
    assert np.unique(candidates[new]).size > 300  # most of the 400 new items appear
    # fresh users that replace finished ones start on day 0 again: old items only
    core.reset(seed=1)
    for _ in range(150):
        core.step(np.tile(np.arange(5), (64, 1)))
    mask = np.zeros(64, dtype=bool)
    mask[::2] = True
    observation = core.reset_users(mask)
    assert not core.is_new_item[observation["candidate_item_ids"][mask]].any()


@pytest.mark.parametrize("options", [TRAINING, EVALUATION, {"new_item_share": 0.5, "new_candidate_share": 1.0}])
def test_checkers_pass_and_the_observation_space_is_unchanged(options):
    env = gym.make("longrec/Music-v0", **options)
    assert env.observation_space == gym.make("longrec/Music-v0").observation_space
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(gym.make("longrec/Music-v0", **options).unwrapped, warn=False)


def test_deterministic_under_a_seed_and_the_one_user_step_matches_step():
    def candidates(seed):
        return np.concatenate([c for c, _ in rollout(envs.make_core("longrec/News-v0", num_users=16, **EVALUATION),
                                                     200, seed)[::2]])

    np.testing.assert_array_equal(candidates(3), candidates(3))
    assert not np.array_equal(candidates(3), candidates(4))
    fast, batched = (envs.make_core("longrec/News-v0", num_users=1, **EVALUATION) for _ in range(2))
    fast.reset(seed=7)
    batched.reset(seed=7)
    rng = np.random.default_rng(1)
    shown_new = 0
    for _ in range(800):
        slate = rng.permutation(fast.num_candidates)[: fast.slate_size]
        observation, reward, terminated, truncated, info, _ = fast.step_one_user(slate)
        result = batched.step(slate[None])
        assert reward == result.reward.item() and (terminated, truncated) == (result.terminated[0], result.truncated[0])
        np.testing.assert_array_equal(observation["candidate_item_ids"], result.observation["candidate_item_ids"][0])
        shown_new += fast.is_new_item[observation["candidate_item_ids"]].sum()
    assert shown_new > 0


def test_evaluation_splits_the_return_by_new_and_old_clicks():
    result = evaluate_agent("myopic", "longrec/Video-v0", num_users=48, seeds=[0, 1], env_kwargs=EVALUATION,
                            progress=False)
    row = result.row
    for metric in COLD_START_METRICS:
        assert np.isfinite(row[metric]) and row[f"{metric}_ci95"] >= 0 and f"{metric}_seed_ci95" in row
    for record in result.records:
        values = record.values
        np.testing.assert_allclose(values["return_new_clicks"] + values["return_old_clicks"], values["return"],
                                   rtol=1e-9, atol=1e-9)
        assert (values["return_new_clicks"] >= 0).all()
    assert row["return_new_clicks"] + row["return_old_clicks"] == pytest.approx(row["return"])
    # myopic clicks new items too; 2 of 20 candidates are new on days >= 1, none on day 0
    assert 0 < row["new_click_share"] < 0.5 and 0 < row["new_shown_share"] < 0.1
    assert row["return_new_clicks"] > 0
    assert "return on new items" in format_row(row)
    again = evaluate_agent("myopic", "longrec/Video-v0", num_users=48, seeds=[0, 1], env_kwargs=EVALUATION,
                           progress=False)
    assert {k: v for k, v in row.items() if k != "seconds"} == {k: v for k, v in again.row.items() if k != "seconds"}
    # the training env has new items that never show: their return is exactly 0
    training = evaluate_agent("myopic", "longrec/Video-v0", num_users=16, env_kwargs=TRAINING, progress=False).row
    assert training["return_new_clicks"] == 0.0 and training["new_shown_share"] == 0.0
    assert training["return_old_clicks"] == pytest.approx(training["return"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"new_item_share": 1.0}, r"session.new_item_share=1.0 is out of range; allowed: \[0, 1\)"),
        ({"new_item_share": -0.1}, r"session.new_item_share=-0.1 is out of range; allowed: \[0, 1\)"),
        ({"new_item_share": 0.2, "new_candidate_share": 1.5},
         r"session.new_candidate_share=1.5 is out of range; allowed: \[0.0, 1.0\]"),
        ({"new_candidate_share": 0.1}, r"new_candidate_share=0.1 needs new_item_share in \(0, 1\)"),
        ({"new_item_share": 0.2, "new_candidate_share": 0.01},
         r"new_candidate_share=0.01 gives 0 of num_candidates=20 candidates; allowed: 0 or >= 0.025"),
        ({"new_item_share": 0.0001}, "new_item_share=0.0001 makes 0 of the catalog's 2000 items new"),
        ({"new_item_share": 0.995}, "num_candidates=20 exceeds the 10 old items"),
        ({"new_item_share": 0.005, "new_candidate_share": 1.0}, "asks for 20 new candidates per step, but only 10"),
        ({"new_item_shar": 0.2}, "unknown environment option 'new_item_shar'"),
    ],
)
def test_bad_values_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        gym.make("longrec/Video-v0", **options)
