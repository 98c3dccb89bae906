"""Tests of ``longrec/InterestEvolution-v0``, the batched replica of RecSim's interest_evolution."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import envs
from envs import interest_evolution as ie

ENV_ID = "longrec/InterestEvolution-v0"
CONFIG = ie.InterestEvolutionConfig()
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _first_episode_returns(policy: str, num_users: int, num_candidates: int, slate_size: int, seed: int):
    """Mean return of each user's first episode under a fixed policy (all users batched)."""
    vec_env = envs.make_vec(ENV_ID, num_envs=num_users, num_candidates=num_candidates, slate_size=slate_size)
    core = envs.get_core(vec_env)
    vec_env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    returns = np.zeros(num_users)
    finished = np.zeros(num_users, dtype=bool)
    while not finished.all():
        candidates = core.candidate_item_ids
        if policy == "random":
            score = rng.random(candidates.shape)
        elif policy == "myopic":
            score = np.take_along_axis(
                core.hidden_state()["interest"], core.catalog.topic[candidates], axis=1
            )
        else:
            score = core.catalog.quality[candidates]
        slates = np.argsort(-score, axis=1, kind="stable")[:, :slate_size]
        _, reward, terminated, truncated, _ = vec_env.step(slates)
        returns += np.where(finished, 0.0, reward)
        finished |= terminated | truncated
    return returns


# -- pure dynamics ----------------------------------------------------------------------


def test_cluster_quality_means_follow_recsim_layout():
    means = ie.cluster_quality_means(CONFIG)
    assert means.shape == (20,)
    np.testing.assert_allclose(means[:14], np.linspace(-3.0, 0.0, 14))
    np.testing.assert_allclose(means[14:], np.linspace(0.0, 3.0, 6))


def test_choice_probabilities_are_proportional_to_shifted_scores():
    affinity = np.array([[0.5, -0.5], [1.0, -1.0]])
    probabilities = ie.choice_probabilities(affinity, CONFIG)
    # shifted scores (a + 1) and no-click (1 + 1): [1.5, 0.5, 2] / 4 and [2, 0, 2] / 4
    np.testing.assert_allclose(probabilities, [[0.375, 0.125, 0.5], [0.5, 0.0, 0.5]])


def test_log_utilities_in_the_core_mnl_reproduce_proportional_choice():
    catalog = ie.sample_interest_evolution_catalog(CONFIG, np.random.default_rng(0))
    model = ie.InterestEvolutionUserModel(catalog, CONFIG)
    state = model.init_state(5, np.random.default_rng(1))
    slate = np.random.default_rng(2).integers(0, catalog.num_items, size=(5, 3))
    logits = np.concatenate(
        [model.item_utilities(state, slate), model.no_click_utility(state)[:, None]], axis=1
    )
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = ie.choice_probabilities(model.affinity(state, slate), CONFIG)
    np.testing.assert_allclose(softmax, expected, rtol=1e-12)
    np.testing.assert_array_equal(model.position_bias(3), np.zeros(3))


def test_stratified_videos_spread_the_remainder_over_distinct_clusters():
    cluster, quality, length = ie.sample_videos(CONFIG, 47, np.random.default_rng(0), stratified=True)
    counts = np.bincount(cluster, minlength=20)
    assert sorted(counts.tolist()) == [2] * 13 + [3] * 7
    assert quality.shape == length.shape == (47,)


def test_sample_choice_matches_probabilities():
    probabilities = np.tile([0.2, 0.3, 0.5], (200_000, 1))
    choice = ie.sample_choice(probabilities, np.random.default_rng(0).random(200_000))
    np.testing.assert_allclose(np.bincount(choice, minlength=3) / 200_000, [0.2, 0.3, 0.5], atol=0.005)


def test_interest_step_by_hand():
    interest = np.array([0.5, 0.5, -0.5, 1.0, -1.0])
    positive = np.array([True, False, True, True, False])
    # alpha = 0.3 * (1 - |I|); step = alpha * (1 - I)
    expected = [0.5 + 0.15 * 0.5, 0.5 - 0.15 * 0.5, -0.5 + 0.15 * 1.5, 1.0, -1.0]
    np.testing.assert_allclose(ie.evolve_interest(interest, positive, CONFIG), expected)
    np.testing.assert_allclose(ie.positive_update_probability(np.array([-1.0, 0.0, 0.6])), [0.0, 0.5, 0.8])


def test_refund_can_use_the_choice_score_instead_of_quality():
    config = ie.InterestEvolutionConfig(user_quality_factor=1.0, document_quality_factor=0.0, num_items=200)
    catalog = ie.sample_interest_evolution_catalog(config, np.random.default_rng(0))
    model = ie.InterestEvolutionUserModel(catalog, config)
    state = model.init_state(2, np.random.default_rng(0))
    slate = np.array([[5, 6], [5, 6]])
    affinity = model.affinity(state, slate)[:, 0]
    model.transition(state, slate, np.array([5, -1]), np.random.default_rng(0))
    # received utility = shifted choice score (affinity + 1); no click costs the step penalty
    expected_first = 200 - 4 + config.budget_update_alpha * 4 * (affinity[0] + 1)
    np.testing.assert_allclose(state.time_left, [expected_first, 200 - 0.5])


def test_catalog_matches_recsim_video_distribution():
    catalog = ie.sample_interest_evolution_catalog(CONFIG, np.random.default_rng(0))
    assert catalog.num_items == 10_000 and catalog.num_topics == 20
    # stratified: exactly RecSim's uniform cluster frequencies
    np.testing.assert_array_equal(np.bincount(catalog.topic, minlength=20), np.full(20, 500))
    residual = catalog.quality - ie.cluster_quality_means(CONFIG)[catalog.topic]
    assert abs(residual.mean()) < 0.005 and abs(residual.std() - 0.1) < 0.005
    np.testing.assert_array_equal(catalog.length, 4.0)
    assert len(catalog.texts) == 10_000 and catalog.texts[0].endswith("video")


def test_transition_caps_watch_time_and_ends_session():
    catalog = ie.sample_interest_evolution_catalog(CONFIG, np.random.default_rng(0))
    model = ie.InterestEvolutionUserModel(catalog, CONFIG)
    state = model.init_state(3, np.random.default_rng(0))
    state.time_left[:] = [1.0, 100.0, 0.25]
    item = int(np.argmax(catalog.quality))
    slate = np.array([[item, 0], [item, 0], [item, 0]])
    transition = model.transition(state, slate, np.array([item, item, -1]), np.random.default_rng(0))
    np.testing.assert_allclose(transition.reward, [1.0, 4.0, 0.0])
    np.testing.assert_allclose(transition.consumption, [0.25, 1.0, 0.0])
    refund = 0.9 / 3.4 * float(catalog.quality[item])
    np.testing.assert_allclose(state.time_left, [refund * 1.0, 100 - 4 + 4 * refund, -0.25], rtol=1e-6)
    # a high-quality last click refunds time: RecSim keeps that session going
    np.testing.assert_array_equal(transition.terminated, [False, False, True])
    assert not transition.truncated.any() and not transition.returned.any()


@pytest.mark.parametrize("user_quality_factor", [0.0, 0.5])
def test_one_user_fast_path_matches_the_batched_path(user_quality_factor):
    """B = 1 runs on Python floats; it must equal row 0 of the batched path bit for bit."""
    config = ie.InterestEvolutionConfig(num_items=200, user_quality_factor=user_quality_factor)
    catalog = ie.sample_interest_evolution_catalog(config, np.random.default_rng(0))
    model = ie.InterestEvolutionUserModel(catalog, config)
    rng = np.random.default_rng(1)
    for trial in range(400):
        one, two = model.init_state(1, rng), model.init_state(2, rng)
        one.interest[0, rng.integers(config.num_clusters)] = (-1.0, 1.0, 0.0)[trial % 3]  # edges of [-1, 1]
        one.time_left[0] = rng.uniform(0.1, 8.0)  # short budgets: capped watch times and session ends
        one.steps[0], one.clicks[0], one.minutes_watched[0] = 7, 3, 12.5
        for name in ("interest", "time_left", "steps", "clicks", "minutes_watched"):
            getattr(two, name)[:] = getattr(one, name)[0]
        clicked = int(rng.integers(-1, config.num_items))
        slate = np.array([[max(clicked, 0), 5]])
        np.testing.assert_array_equal(model.context(one), model.context(two)[:1])
        batched_utilities = model.item_utilities(two, slate.repeat(2, 0))
        np.testing.assert_array_equal(model.item_utilities(one, slate), batched_utilities[:1])

        one_rng, two_rng = np.random.default_rng(trial), np.random.default_rng(trial)
        fast = model.transition(one, slate, np.array([clicked]), one_rng)
        batched = model.transition(two, slate.repeat(2, 0), np.array([clicked, clicked]), two_rng)
        for field in ("reward", "consumption", "session_ended", "returned", "terminated", "truncated"):
            assert getattr(fast, field).dtype == getattr(batched, field).dtype
            np.testing.assert_array_equal(getattr(fast, field), getattr(batched, field)[:1])
        for name in ("interest", "time_left", "steps", "clicks", "minutes_watched"):
            np.testing.assert_array_equal(getattr(one, name), getattr(two, name)[:1])
        # one coin drawn for the one user, as the batched path draws one per user
        assert one_rng.random() == np.random.default_rng(trial).random(2)[1]


# -- environment contract ----------------------------------------------------------------


@pytest.mark.parametrize(("num_candidates", "slate_size"), [(10, 2), (4, 4)])
def test_check_env_gymnasium_and_sb3(num_candidates, slate_size):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(ENV_ID, num_candidates=num_candidates, slate_size=slate_size, num_items=500)
    assert env.action_space == gym.spaces.MultiDiscrete([num_candidates] * slate_size)
    assert env.observation_space["candidate_item_ids"].shape == (num_candidates,)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)


def test_registered_with_describe_line():
    assert ENV_ID in envs.registered_ids()
    assert "RecSim" in envs.describe(ENV_ID)


def _rollout(seed: int, steps: int = 150):
    env = gym.make(ENV_ID)
    observation, _ = env.reset(seed=seed)
    action_rng = np.random.default_rng(123)
    trace = [observation["candidate_item_ids"].copy()]
    for _ in range(steps):
        action = action_rng.permutation(10)[:2]
        observation, reward, terminated, truncated, info = env.step(action)
        trace += [observation["candidate_item_ids"].copy(), np.array([reward, info["clicked_position"]])]
        if terminated or truncated:
            observation, _ = env.reset()
    return np.concatenate([t.astype(float).ravel() for t in trace])


def test_same_seed_same_trajectory_different_seed_differs():
    first, second, other = _rollout(7), _rollout(7), _rollout(8)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_single_and_vector_views_agree():
    single = gym.make(ENV_ID)
    single_obs, _ = single.reset(seed=3)
    vec_env = envs.make_vec(ENV_ID, num_envs=1)
    vec_obs, _ = vec_env.reset(seed=3)
    for step in range(30):
        action = np.array([step % 10, (step + 3) % 10])
        single_obs, reward, *_ = single.step(action)
        vec_obs, vec_reward, *_ = vec_env.step(action[None])
        assert reward == vec_reward[0]
    np.testing.assert_array_equal(single_obs["history_item_ids"], vec_obs["history_item_ids"][0])


def test_episode_is_one_session_that_ends_with_the_budget():
    vec_env = envs.make_vec(ENV_ID, num_envs=64)
    core = envs.get_core(vec_env)
    vec_env.reset(seed=0)
    slates = np.tile([0, 1], (64, 1))
    ended = np.zeros(64, dtype=bool)
    while not ended.all():
        before = core.hidden_state()["time_left"]
        _, _, terminated, truncated, info = vec_env.step(slates)
        assert not truncated.any()
        # only a user within one (refund-adjusted) watch of the end can run out
        max_cost = 4.0 * (1.0 + CONFIG.budget_update_alpha * np.abs(core.catalog.quality).max())
        assert np.all(before[terminated] <= max_cost)
        np.testing.assert_array_equal(info["session_ended"], terminated)
        ended |= terminated
    assert set(core.hidden_state()) >= {"interest", "time_left"}


def test_quality_oracle_beats_myopic_beats_random():
    random_return = _first_episode_returns("random", 300, 10, 2, seed=0).mean()
    myopic = _first_episode_returns("myopic", 300, 10, 2, seed=0).mean()
    oracle = _first_episode_returns("quality_oracle", 300, 10, 2, seed=0).mean()
    assert oracle > 1.5 * myopic and myopic > random_return
    # RecSim's values at C=10, K=2 are about 154 / 165 / 284 minutes
    assert 140 < random_return < 170 and 250 < oracle < 320


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_candidates": 2, "slate_size": 3}, "slate_size"),
        ({"num_candidates": 20, "num_items": 10}, "exceeds the catalog size"),
        ({"num_candidates": 2.5}, "must be an integer"),
        ({"time_budgett": 10.0}, "valid: num_candidates"),
        ({"time_budget": 0.0}, "time_budget"),
        ({"min_normalizer": 0.0}, "min_normalizer"),
        ({"duplicate_mode": "ignore"}, "duplicate_mode"),
    ],
)
def test_invalid_kwargs_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        envs.make_vec(ENV_ID, num_envs=2, **kwargs)


def test_duplicate_slate_raises():
    env = gym.make(ENV_ID)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="repeats a candidate"):
        env.step(np.array([3, 3]))


# -- against RecSim itself (needs the peers extra) ---------------------------------------


def test_random_policy_return_matches_recsim():
    pytest.importorskip("recsim.environments.interest_evolution")  # the peers extra
    sys.path.insert(0, str(BENCHMARKS))
    import _recsim_peer as peer

    theirs = peer.run_recsim_episodes("random", 10, 2, episodes=60, seed=0).mean()
    ours = _first_episode_returns("random", 400, 10, 2, seed=0).mean()
    assert abs(ours - theirs) / theirs < 0.05


@pytest.mark.expensive
@pytest.mark.parametrize(("num_candidates", "slate_size"), [(10, 2), (20, 5)])
def test_all_policies_match_recsim(num_candidates, slate_size):
    pytest.importorskip("recsim.environments.interest_evolution")  # the peers extra
    sys.path.insert(0, str(BENCHMARKS))
    import recsim_fidelity

    result = recsim_fidelity.main(
        ["--num-candidates", str(num_candidates), "--slate-size", str(slate_size), "--episodes", "300"]
    )
    for policy, row in result.items():
        assert abs(row["rel_diff"]) <= 0.05, (policy, row)
