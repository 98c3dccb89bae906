"""Tests of the longrec/Travel-v0 preset: registration, env checkers, the clickbait trap, text leak, determinism."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from agents.logs import behaviour_lives
from envs.text import generate_item_texts, load_text_spec, text_quality_auc
from experiments import cli

ENV_ID = "longrec/Travel-v0"


def test_registered_and_listed_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert ENV_ID in envs.registered_ids() and ENV_ID in gym.registry
    assert cli.main(["envs"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == [ENV_ID]]
    assert len(lines) == 1
    assert "Travel booking" in lines[0] and "price of a booking" in lines[0]


def test_gymnasium_and_sb3_checkers_pass() -> None:
    gym_check_env(gym.make(ENV_ID).unwrapped, skip_render_check=True)
    sb3_check_env(gym.make(ENV_ID).unwrapped, warn=False)


def test_catalog_prices_and_spaces() -> None:
    env = gym.make(ENV_ID)
    assert env.action_space == gym.spaces.MultiDiscrete([30] * 6)
    catalog = envs.get_core(env.unwrapped).catalog
    assert catalog.num_items == 3000 and catalog.num_topics == 12
    assert 600 < np.median(catalog.length) < 1100 and catalog.length.max() <= 6000
    assert "\n" in catalog.texts[0]


def _lives(behaviour: str, num_users: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One life of ``num_users`` users under ``behaviour``: lives, bookings per user, bookings per click."""
    core = envs.make_core(ENV_ID, num_users=num_users)
    bookings = np.zeros(num_users)
    clicks_and_bookings = np.zeros(2)

    def count(rows, observation, slates, result) -> None:
        booked = result.reward[rows] > 0
        clicked = result.info["clicked_item_id"][rows] >= 0
        # the reward of a booking is the booked trip's price, and nothing else pays
        np.testing.assert_array_equal(
            result.reward[rows][booked], core.catalog.length[result.info["clicked_item_id"][rows][booked]]
        )
        assert not (booked & ~clicked).any()
        np.add.at(bookings, rows, booked)
        clicks_and_bookings[:] += clicked.sum(), booked.sum()

    lives = behaviour_lives(core, behaviour, seed=seed, on_step=count).values
    return lives, bookings, clicks_and_bookings


def test_clickbait_trap_bookings_are_rare_and_bait_costs_return() -> None:
    myopic, myopic_bookings, myopic_counts = _lives("myopic", 400, seed=0)
    aware, aware_bookings, aware_counts = _lives("quality_aware", 400, seed=0)
    ratio = aware["return"].mean() / myopic["return"].mean()
    assert ratio >= 1.3 * 4, ratio  # 2,000 users (benchmarks/tradeoff.py): about 14
    # the bait wins the click but loses the user: more clicks per slate, far fewer days
    ctr = {name: (lives["ctr"] * lives["length"]).sum() / lives["length"].sum() for name, lives in
           (("myopic", myopic), ("aware", aware))}
    assert ctr["myopic"] > ctr["aware"] + 0.05
    assert aware["sessions"].mean() > 3 * myopic["sessions"].mean()
    # trips are rare: under 2% of clicks end in a booking; a well-served user books a few per life
    assert myopic_counts[1] / myopic_counts[0] < 0.02 and aware_counts[1] / aware_counts[0] < 0.02
    assert 1.0 < aware_bookings.mean() < 4.0
    assert myopic_bookings.mean() < 0.5


def test_trips_are_planned_over_several_sessions() -> None:
    num_users = 400
    core = envs.make_core(ENV_ID, num_users=num_users)
    first_booking_day = np.full(num_users, -1)

    def record(rows, observation, slates, result) -> None:
        new = rows[(result.reward[rows] > 0) & (first_booking_day[rows] < 0)]
        first_booking_day[new] = result.info["day"][new]

    behaviour_lives(core, "quality_aware", seed=1, on_step=record)
    booked = first_booking_day[first_booking_day >= 0]
    assert len(booked) > num_users // 2
    assert np.median(booked) >= 4  # days of browsing before the first booking


def test_texts_leak_quality_partly() -> None:
    # the diagnostic of envs/domains/README.md: 3,000 items, quality ~ N(0, 1), appeal = sigmoid(-quality + N(0, 1))
    spec = load_text_spec("travel")
    rng = np.random.default_rng(0)
    quality = rng.standard_normal(3000)
    appeal = 1.0 / (1.0 + np.exp(quality - rng.standard_normal(3000)))
    texts = generate_item_texts(spec, rng.integers(spec.num_topics, size=3000), quality, appeal, rng)
    assert 0.70 <= text_quality_auc(texts, quality, seed=0) <= 0.95
    assert max(len(text.split()) for text in texts) <= 50
    # the preset's own catalog, as benchmarks/tradeoff.py measures it
    catalog = envs.make_core(ENV_ID).catalog
    assert 0.70 <= text_quality_auc(list(catalog.texts), catalog.quality, seed=0) <= 0.95


def test_bait_deals_read_sensational() -> None:
    catalog = envs.make_core(ENV_ID).catalog
    markers = ("OFF", "!!!", "DEAL", "SALE", "cheap", "seats left", "almost nothing", "ends tonight")

    def rate(items: np.ndarray) -> float:
        return float(np.mean([any(m in catalog.texts[i] for m in markers) for i in items]))

    order = np.argsort(catalog.appeal)
    bait, calm = order[-300:], order[:300]
    assert rate(bait) > rate(calm) + 0.3
    assert catalog.quality[bait].mean() < catalog.quality[calm].mean() - 1.0


def _rollout(seed: int, steps: int = 120) -> tuple[np.ndarray, np.ndarray]:
    vec = envs.make_vec(ENV_ID, num_envs=8)
    vec.reset(seed=seed)
    action_rng = np.random.default_rng(0)
    rewards, items = [], []
    for _ in range(steps):
        action = np.stack([action_rng.permutation(30)[:6] for _ in range(8)])
        observation, reward, *_ = vec.step(action)
        rewards.append(reward)
        items.append(observation["candidate_item_ids"].copy())
    return np.array(rewards), np.array(items)


def test_two_rollouts_with_same_seed_are_identical() -> None:
    (r1, i1), (r2, i2), (_, i3) = _rollout(3), _rollout(3), _rollout(4)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(i1, i2)
    assert not np.array_equal(i1, i3)
