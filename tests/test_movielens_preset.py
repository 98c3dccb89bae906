"""Tests of the longrec/MovieLens-v0 preset: env checkers, determinism, data-derived world, calibration."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs
import envs.movielens_preset as mlp
from envs.movielens import DEFAULT_DATA_DIR, load_movielens

FIXTURE = Path(__file__).parent / "fixtures" / "ml_tiny"
HAS_DATA = (DEFAULT_DATA_DIR / "ratings.csv").is_file()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="project data copy absent")


def test_world_from_fixture_by_hand() -> None:
    data = load_movielens(FIXTURE)
    world = mlp.build_world(data, quality_shrinkage=0.0)
    cat = world.catalog
    assert cat.num_items == 6 and cat.texts == data.texts
    assert cat.topic_names[-1] == mlp.NO_GENRE_TOPIC  # "Les Misérables" has no genre in the fixture
    assert cat.topic_names[cat.topic[5]] == mlp.NO_GENRE_TOPIC
    np.testing.assert_allclose(world.genre_weights.sum(axis=1), 1.0)
    # Heat: Action|Crime|Thriller; Action and Crime appear once in the catalog, Thriller twice -> Action.
    assert cat.topic_names[cat.topic[2]] == "Action"
    # Without shrinkage, quality orders items by mean rating: Toy Story (5, 5, 3) above Babylon 5 (4.5, 2.5).
    assert cat.quality[0] > cat.quality[4] > cat.quality[5]
    # Appeal and popularity rise with the ratings count (3 for items 0-2, 2 for 3-5).
    assert cat.appeal[0] > cat.appeal[3] and cat.popularity[0] == pytest.approx(1.0)
    assert world.user_interests.shape == (3, len(cat.topic_names))
    assert np.all(np.abs(world.user_interests) <= 1.0)
    np.testing.assert_allclose(world.real_genre_distribution.sum(), 1.0)


def test_quality_is_the_standardised_shrunk_mean_by_hand() -> None:
    data = load_movielens(FIXTURE)
    quality = mlp.build_world(data, quality_shrinkage=1.0).catalog.quality
    mu = 50.5 / 15  # all fixture ratings
    # (sum of ratings + 1 * mu) / (count + 1) per item, from the fixture's ratings.csv
    shrunk = np.array([(13 + mu) / 4, (10.5 + mu) / 4, (10 + mu) / 4, (6 + mu) / 3, (7 + mu) / 3, (4 + mu) / 3])
    np.testing.assert_allclose(quality, (shrunk - shrunk.mean()) / shrunk.std(), rtol=1e-5)


def test_jensen_shannon_by_hand() -> None:
    assert mlp.jensen_shannon([1, 0], [1, 0]) == 0.0
    assert mlp.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4)
    expected = 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25)) + 0.5 * np.log2(1 / 0.75)
    assert mlp.jensen_shannon([0.5, 0.5], [1.0, 0.0]) == pytest.approx(expected)


def test_preset_on_fixture_folder_and_errors() -> None:
    core = mlp.movielens(num_users=4, data_path=FIXTURE, num_candidates=4, slate_size=2)
    obs = core.reset(seed=1)
    assert obs["candidate_item_ids"].shape == (4, 4)
    result = core.step(np.tile([0, 1], (4, 1)))
    assert result.reward.shape == (4,)
    with pytest.raises(ValueError, match="unknown MovieLens-v0 option 'bogus'"):
        mlp.movielens(data_path=FIXTURE, bogus=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mlp.movielens(data_path=FIXTURE / "missing")


@needs_data
def test_registered_and_passes_env_checkers() -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    assert mlp.ENV_ID in gym.registry
    env = gym.make(mlp.ENV_ID)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(gym.make(mlp.ENV_ID).unwrapped, warn=False)
    core = envs.get_core(env.unwrapped)
    assert core.catalog.num_items == 9742 and core.catalog.texts[0].startswith("Toy Story (1995)")


@needs_data
def test_two_rollouts_are_identical() -> None:
    def rollout() -> tuple[np.ndarray, np.ndarray]:
        vec = envs.make_vec(mlp.ENV_ID, num_envs=8)
        obs, _ = vec.reset(seed=3)
        rewards, items = [], []
        rng = np.random.default_rng(0)
        for _ in range(30):
            action = np.stack([rng.permutation(20)[:5] for _ in range(8)])
            obs, reward, _, _, _ = vec.step(action)
            rewards.append(reward)
            items.append(obs["candidate_item_ids"].copy())
        return np.array(rewards), np.array(items)

    r1, i1 = rollout()
    r2, i2 = rollout()
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(i1, i2)
    assert r1.sum() > 0


@needs_data
def test_users_start_from_real_profiles_and_quality_tracks_ratings() -> None:
    core = mlp.movielens(num_users=64)
    core.reset(seed=0)
    world = core.user_model.world
    interest = core.hidden_state()["interest"]
    # every simulated user's interests are one of the real users' profiles
    dist = np.abs(interest[:, None, :] - world.user_interests[None, :, :]).sum(axis=2)
    assert np.all(dist.min(axis=1) < 1e-12)
    data = load_movielens()
    counts = data.item_counts()
    mean = np.bincount(data.item, weights=data.rating, minlength=data.num_items) / np.maximum(counts, 1)
    frequent = counts >= 50
    assert np.corrcoef(mean[frequent], core.catalog.quality[frequent])[0, 1] > 0.95


@needs_data
def test_genre_calibration_under_popularity_policy() -> None:
    report = mlp.genre_calibration(num_users=256, num_steps=100, seed=0)
    print(f"MovieLens-v0 genre JSD (popularity policy, 256 users x 100 steps): {report['jsd']:.4f}")
    assert report["clicks"] > 1000
    assert report["jsd"] < 0.05
    assert sum(report["simulated"].values()) == pytest.approx(1.0)
