"""The simulator: checkers, determinism, agreement of the three views, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from agents.baselines import top_k_indices

ALL_IDS = envs.registered_ids()


def first_slate(k: int, n: int = 1) -> np.ndarray:
    return np.tile(np.arange(k), (n, 1))


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_gymnasium_and_sb3_checkers_pass(env_id):
    env = gym.make(env_id)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(gym.make(env_id).unwrapped, warn=False)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_two_rollouts_with_same_seed_are_identical(env_id):
    def rollout(seed):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        trace = [obs["candidate_item_ids"].copy()]
        for _ in range(60):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample() * 0 + np.arange(
                env.action_space.shape[0]))
            trace.append(np.concatenate([obs["candidate_item_ids"], obs["history_item_ids"], [reward]]))
            if terminated or truncated:
                obs, _ = env.reset()
        return np.concatenate(trace)

    a, b, c = rollout(3), rollout(3), rollout(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("env_id", "steps", "by_quality"), [
    ("longrec/Video-v0", 400, False), ("longrec/News-v0", 400, False),
    ("longrec/Travel-v0", 600, True),  # good trips: long lives and some of its rare bookings (purchase rewards)
])
def test_single_vector_and_sb3_views_agree_step_for_step(env_id, steps, by_quality):
    k = gym.make(env_id).action_space.shape[0]
    rng = np.random.default_rng(0)
    single = gym.make(env_id).unwrapped
    vector = envs.make_vec(env_id, num_envs=1)
    sb3 = envs.make_sb3_vec(env_id, num_envs=1)
    s_obs, _ = single.reset(seed=11)
    v_obs, _ = vector.reset(seed=11)
    sb3.seed(11)
    b_obs = sb3.reset()
    episodes_ended = rewarded = 0
    for _ in range(steps):
        for key in s_obs:
            np.testing.assert_array_equal(s_obs[key], v_obs[key][0])
            np.testing.assert_array_equal(s_obs[key], b_obs[key][0])
        quality = single.core.catalog.quality[s_obs["candidate_item_ids"]]
        slate = np.argsort(-quality)[:k] if by_quality else rng.permutation(single.core.num_candidates)[:k]
        s_obs, s_r, s_term, s_trunc, _ = single.step(slate)
        v_obs, v_r, v_term, v_trunc, v_info = vector.step(slate[None])
        b_obs, b_r, b_done, b_info = sb3.step(slate[None])
        assert s_r == pytest.approx(v_r[0]) and s_r == pytest.approx(float(b_r[0]), rel=1e-6)
        assert (s_term, s_trunc) == (bool(v_term[0]), bool(v_trunc[0]))
        assert (s_term or s_trunc) == bool(b_done[0])
        rewarded += s_r > 0
        if s_term or s_trunc:
            episodes_ended += 1
            for key in s_obs:
                np.testing.assert_array_equal(s_obs[key], v_info["final_obs"][0][key])
                np.testing.assert_array_equal(s_obs[key], b_info[0]["terminal_observation"][key])
            s_obs, _ = single.reset()
    assert episodes_ended >= 1 and rewarded >= 1


def test_batched_vector_env_matches_sb3_vec_env_for_many_users():
    vector = envs.make_vec("longrec/Video-v0", num_envs=64)
    sb3 = envs.make_sb3_vec("longrec/Video-v0", num_envs=64)
    v_obs, _ = vector.reset(seed=5)
    sb3.seed(5)
    b_obs = sb3.reset()
    rng = np.random.default_rng(1)
    for _ in range(100):
        slates = np.argsort(rng.random((64, 20)), axis=1)[:, :5]
        v_obs, v_r, *_ = vector.step(slates)
        b_obs, b_r, *_ = sb3.step(slates)
        np.testing.assert_array_equal(v_obs["history_item_ids"], b_obs["history_item_ids"])
        np.testing.assert_allclose(v_r, b_r, rtol=1e-6)


def test_one_user_fast_paths_match_row_zero_of_the_batched_path():
    """The core's B = 1 shortcuts (Python on a few numbers) equal row 0 of the batched code."""
    from envs.core import _clicked_items, _duplicate_rows, _entries_in_range, _sample_mnl

    rng = np.random.default_rng(0)
    for trial in range(300):
        k = int(rng.integers(1, 6))
        utilities = rng.normal(0.0, 3.0, size=(1, k))
        no_click = rng.normal(size=1)
        fast = _sample_mnl(utilities, no_click, np.random.default_rng(trial))
        batched = _sample_mnl(utilities.repeat(2, 0), no_click.repeat(2), np.random.default_rng(trial))
        np.testing.assert_array_equal(fast, batched[:1])
        slate_item_ids = rng.integers(0, 50, size=(1, k))
        position = rng.integers(-1, k, size=1)
        batched = _clicked_items(slate_item_ids.repeat(2, 0), position.repeat(2))
        np.testing.assert_array_equal(_clicked_items(slate_item_ids, position), batched[:1])
        slate = rng.integers(-1, 6, size=(1, k))
        assert _entries_in_range(slate, 5) == _entries_in_range(slate.repeat(2, 0), 5)
        fast_duplicates, batched_duplicates = _duplicate_rows(slate), _duplicate_rows(slate.repeat(2, 0))
        assert (fast_duplicates is None) == (batched_duplicates is None)

    for history_length in (20, 3, 2):  # longer than, as long as and shorter than the slate
        one, two = (
            envs.make_core("longrec/InterestEvolution-v0", num_users=n, slate_size=3, history_length=history_length)
            for n in (1, 2)
        )
        one.reset(seed=0)
        two.reset(seed=0)
        for position, consumption in [(-1, 0.0), (0, 0.3), (2, 1.0 / 3.0), (1, 0.7)]:
            slate_item_ids = rng.integers(0, 100, size=(1, 3))
            one._push_history(slate_item_ids, np.array([position]), np.array([consumption]))
            two._push_history(slate_item_ids.repeat(2, 0), np.array([position] * 2), np.array([consumption] * 2))
            for key in ("history_item_ids", "history_responses", "history_consumption"):
                np.testing.assert_array_equal(getattr(one, key), getattr(two, key)[:1])
                assert getattr(one, key).dtype == getattr(two, key).dtype


@pytest.mark.parametrize(
    ("env_id", "options"),
    [(env_id, {}) for env_id in ALL_IDS]
    + [
        ("longrec/InterestEvolution-v0", {"duplicate_mode": "penalty", "time_budget": 20.0, "history_length": 1}),
        ("longrec/Video-v0", {"duplicate_mode": "penalty"}),
    ],
)
def test_one_user_step_matches_step(env_id, options):
    """``step_one_user`` (the single-user view's step) equals row 0 of ``step`` bit for bit, types included."""
    fast, batched = (envs.make_core(env_id, num_users=1, **options) for _ in range(2))
    fast.reset(seed=7)
    batched.reset(seed=7)
    rng = np.random.default_rng(1)
    episodes_ended = 0
    for step in range(600):
        slate = rng.permutation(fast.num_candidates)[: fast.slate_size]
        if options.get("duplicate_mode") == "penalty" and step % 3 == 0:
            slate[-1] = slate[0]
        observation, reward, terminated, truncated, info, final_observation = fast.step_one_user(slate)
        result = batched.step(slate[None])
        assert type(reward) is float and reward == result.reward.item()
        assert (terminated, truncated) == (result.terminated.item(), result.truncated.item())
        assert info.keys() == result.info.keys()
        for key, value in result.info.items():
            assert type(info[key]) is type(value[0]) and info[key] == value[0], key
        observations = [(observation, result.observation)]
        if terminated or truncated:
            episodes_ended += 1
            observations.append((final_observation, result.final_observation))
        else:
            assert final_observation is None and result.final_observation is None
        for row, batch in observations:
            assert row.keys() == batch.keys()
            for key, value in batch.items():
                assert row[key].dtype == value.dtype
                np.testing.assert_array_equal(row[key], value[0])
    assert episodes_ended >= 1


def test_observation_never_contains_hidden_state():
    env = gym.make("longrec/Video-v0")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {
        "history_item_ids", "history_responses", "history_consumption", "candidate_item_ids", "context",
    }
    hidden = env.unwrapped.hidden_state()
    assert {"interest", "satisfaction", "fatigue", "time_left"} <= set(hidden)
    assert not any(np.shares_memory(hidden["satisfaction"], v) for v in obs.values())


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.array([0, 0, 1, 2, 3]), "repeats a candidate"),
        (np.array([0, 1, 2, 3, 20]), "out of range; valid candidate indices: 0..19"),
        (np.array([0, 1, 2]), "expected (1, 5)"),
    ],
)
def test_bad_slates_raise_clear_errors(action, message):
    env = gym.make("longrec/Video-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        env.step(action)


def test_step_before_reset_and_bad_config_raise():
    env = gym.make("longrec/Video-v0").unwrapped
    with pytest.raises(ValueError, match="before reset"):
        env.step(np.arange(5))
    with pytest.raises(ValueError, match=r"slate_size=30 must be in \[1, num_candidates=20\]"):
        gym.make("longrec/Video-v0", slate_size=30)
    with pytest.raises(ValueError, match="unknown environment option 'num_candidate'"):
        gym.make("longrec/Video-v0", num_candidate=10)
    with pytest.raises(ValueError, match="duplicate_mode='ignore' is not valid"):
        gym.make("longrec/Video-v0", duplicate_mode="ignore")
    with pytest.raises(ValueError, match="user.return_threshold=2.0 is out of range"):
        gym.make("longrec/Video-v0", user={"return_threshold": 2.0})


def test_duplicate_penalty_mode_penalises_instead_of_raising():
    core = envs.make_core("longrec/Video-v0", num_users=4, duplicate_mode="penalty", duplicate_penalty=5.0)
    core.reset(seed=0)
    slates = first_slate(5, 4)
    slates[0] = [0, 0, 1, 2, 3]
    result = core.step(slates)
    assert result.info["duplicate_slate"].tolist() == [True, False, False, False]
    assert result.reward[0] <= result.info["consumption"][0] * core.catalog.length.max() - 5.0 + 1e-9


def test_candidates_are_distinct_and_history_records_the_slate():
    core = envs.make_core("longrec/Video-v0", num_users=256)
    obs = core.reset(seed=0)
    for _ in range(5):
        cand = obs["candidate_item_ids"]
        assert all(len(set(row)) == len(row) for row in cand)
        slates = first_slate(5, 256)
        result = core.step(slates)
        alive = ~(result.terminated | result.truncated)
        np.testing.assert_array_equal(result.observation["history_item_ids"][alive, -5:], cand[alive, :5])
        clicked = result.info["clicked_position"]
        rows = np.flatnonzero(alive & (clicked >= 0))
        assert (result.observation["history_responses"][rows, -5 + clicked[rows]] == 2).all()
        obs = result.observation


def test_sessions_end_users_return_and_churn():
    core = envs.make_core("longrec/Video-v0", num_users=500)
    core.reset(seed=0)
    returned = churned = ended = 0
    for _ in range(300):
        result = core.step(first_slate(5, 500))
        ended += result.info["session_ended"].sum()
        returned += result.info["returned"].sum()
        churned += result.info["churned"].sum()
    assert ended == returned + churned
    assert returned > 0 and churned > 0


def test_hidden_state_evolves_satisfaction_falls_under_clickbait():
    core = envs.make_core("longrec/Video-v0", num_users=1000)
    core.reset(seed=0)
    start = core.hidden_state()["satisfaction"].mean()
    for _ in range(10):
        core.step(top_k_indices(core.candidate_utilities(), 5))
    assert core.hidden_state()["satisfaction"].mean() < start - 0.05
