"""Baselines: valid slates on every preset, the choice-model optimisation, seeding, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import envs
from agents.baselines import (
    BASELINES,
    BEHAVIOURS,
    MyopicAgent,
    OracleAgent,
    PopularityAgent,
    QualityAgent,
    RandomAgent,
    distinct_slates,
    make_baseline,
    top_k_indices,
)
from agents.registry import AGENT_INFO, FIXED_AGENTS
from agents.slateq import greedy_mnl_slate, slate_value, topk_mnl_slate

ALL_IDS = envs.registered_ids()
SIMPLE = (*FIXED_AGENTS, "noisy_quality", "quality_aware")
"""the baselines built from the core alone"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_valid_slates(slates: np.ndarray, num_users: int, slate_size: int, num_candidates: int) -> None:
    assert slates.shape == (num_users, slate_size)
    assert slates.dtype.kind in "iu"
    assert slates.min() >= 0 and slates.max() < num_candidates
    ordered = np.sort(slates, axis=1)
    assert not (ordered[:, 1:] == ordered[:, :-1]).any(), "a slate repeats a candidate"


@pytest.mark.parametrize("env_id", ALL_IDS)
@pytest.mark.parametrize("name", SIMPLE)
def test_each_baseline_gives_valid_slates_on_every_preset(env_id, name):
    core = envs.make_core(env_id, num_users=16)
    agent = make_baseline(name, core, seed=3)
    agent.reset(3)
    observation = core.reset(seed=3)
    for _ in range(25):  # long enough for some users to be auto-reset mid-run on short presets
        slates = agent.act(observation)
        assert_valid_slates(slates, 16, core.slate_size, core.num_candidates)
        observation = core.step(slates).observation  # the core itself rejects invalid slates


def test_random_agent_is_seeded():
    observation = envs.make_core("longrec/Video-v0", num_users=8).reset(seed=0)
    a, b = RandomAgent(20, 5, seed=1), RandomAgent(20, 5, seed=1)
    np.testing.assert_array_equal(a.act(observation), b.act(observation))
    first = a.act(observation)
    a.reset(1)
    b.reset(2)
    assert not np.array_equal(a.act(observation), b.act(observation))
    a.reset(1)
    a.act(observation)
    np.testing.assert_array_equal(a.act(observation), first)


def test_popularity_ranks_candidates_by_visible_popularity():
    popularity = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    agent = PopularityAgent(popularity, slate_size=3)
    slates = agent.act({"candidate_item_ids": np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])})
    # candidate indices of items 1 (0.9), 3 (0.7), 2 (0.5), most popular on top
    np.testing.assert_array_equal(slates, [[1, 3, 2], [3, 1, 2]])


def click_probability(utilities, position_bias, no_click, slate):
    weight = np.exp(utilities[list(slate)] + position_bias)
    return weight.sum() / (np.exp(no_click) + weight.sum())


def test_myopic_slate_maximises_click_probability_by_brute_force():
    core = envs.make_core("longrec/Video-v0", num_users=6, num_candidates=6, slate_size=3)
    observation = core.reset(seed=5)
    slates = MyopicAgent(core).act(observation)
    utilities, bias, no_click = core.candidate_utilities(), core.position_bias, core.no_click_utility()
    assert bias[0] > bias[-1]  # the preset has position bias, so the order matters
    for user in range(6):
        best = max(
            click_probability(utilities[user], bias, no_click[user], s) for s in itertools.permutations(range(6), 3)
        )
        assert click_probability(utilities[user], bias, no_click[user], slates[user]) == pytest.approx(best)


def test_greedy_slate_by_hand_and_against_brute_force():
    # K = 1, no position bias: value of showing i is (w0 q0 + w_i q_i) / (w0 + w_i)
    values = np.array([[10.0, 1.0, 4.0]])
    utilities = np.log(np.array([[1.0, 3.0, 1.0]]))  # weights 1, 3, 1
    no_click_u, no_click_v = np.array([0.0]), np.array([0.0])  # weight 1, value 0
    # slate values: item0 10/2 = 5, item1 3/4 = 0.75, item2 4/2 = 2 -> item 0
    np.testing.assert_array_equal(greedy_mnl_slate(values, utilities, np.zeros(1), no_click_u, no_click_v), [[0]])
    # top-K ranks by w * q: 10, 3, 4 -> the same item here
    np.testing.assert_array_equal(topk_mnl_slate(values, utilities, np.zeros(1)), [[0]])
    assert slate_value(values, utilities, np.zeros(1), no_click_u, no_click_v, np.array([[1]]))[0] == pytest.approx(
        0.75
    )

    rng = np.random.default_rng(0)
    num_users, c, k = 200, 6, 3
    values = rng.normal(size=(num_users, c))
    utilities = rng.normal(size=(num_users, c))
    bias = -0.3 * np.arange(k)
    no_click_u, no_click_v = rng.normal(size=num_users), rng.normal(size=num_users)
    greedy = greedy_mnl_slate(values, utilities, bias, no_click_u, no_click_v)
    greedy_value = slate_value(values, utilities, bias, no_click_u, no_click_v, greedy)
    all_slates = np.array(list(itertools.permutations(range(c), k)))
    best = np.max(
        [slate_value(values, utilities, bias, no_click_u, no_click_v, np.tile(s, (num_users, 1))) for s in all_slates],
        axis=0,
    )
    random_value = slate_value(values, utilities, bias, no_click_u, no_click_v, np.tile(all_slates[7], (num_users, 1)))
    assert np.all(greedy_value <= best + 1e-12)
    # the greedy optimisation is near-optimal (Ie et al. 2019) and far better than a fixed slate
    assert np.mean(greedy_value >= best - 1e-9) > 0.8
    assert greedy_value.mean() > random_value.mean() + 0.3


def test_oracle_prefers_quality_over_clickbait():
    core = envs.make_core("longrec/Video-v0", num_users=256)
    core.reset(seed=0)
    oracle = OracleAgent(core)
    slates = oracle.act(core.observation())
    myopic = MyopicAgent(core).act(core.observation())
    ids = core.candidate_item_ids
    shown = lambda s: np.take_along_axis(ids, s, axis=1)  # noqa: E731
    quality, appeal = core.catalog.quality, core.catalog.appeal
    assert quality[shown(slates)].mean() > quality[shown(myopic)].mean() + 0.5
    assert appeal[shown(slates)].mean() < appeal[shown(myopic)].mean()


def test_distinct_slates_replaces_repeats_with_best_unused_logit():
    logits = np.zeros((1, 3, 4))
    logits[0, 1] = [5.0, 4.0, 3.0, 0.0]  # position 1 wants 0, then 1
    logits[0, 2] = [5.0, 4.0, 3.0, 9.0]
    repaired = distinct_slates(np.array([[0, 0, 3]]), logits)
    np.testing.assert_array_equal(repaired, [[0, 1, 3]])
    np.testing.assert_array_equal(distinct_slates(np.array([[2, 1, 3]]), logits), [[2, 1, 3]])


def test_make_baseline_errors_name_the_valid_choices():
    core = envs.make_core("longrec/Video-v0", num_users=2)
    with pytest.raises(ValueError, match="unknown baseline 'clickbait'.*valid"):
        make_baseline("clickbait", core)
    with pytest.raises(ValueError, match="needs policy= or path="):
        make_baseline("pctr_greedy", core)
    with pytest.raises(ValueError, match="slate_size=6"):
        RandomAgent(5, 6)
    with pytest.raises(ValueError, match="temperature=-1"):
        make_baseline("noisy_quality", core, temperature=-1)


def test_every_baseline_is_listed_in_the_registry_or_the_behaviours():
    assert set(BASELINES) <= set(AGENT_INFO) | set(BEHAVIOURS)
    assert set(SIMPLE) | set(BEHAVIOURS) < set(BASELINES)
    core = envs.make_core("longrec/Video-v0", num_users=2)
    for name in SIMPLE:
        expected = AGENT_INFO[name].privileged if name in AGENT_INFO else True  # the behaviours read hidden state
        assert make_baseline(name, core).privileged is expected, name


def test_top_k_indices_ranks_best_first_and_breaks_ties_by_lower_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.3], [1.0, 1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(top_k_indices(scores, 3), [[1, 3, 2], [0, 1, 2]])


def test_quality_agents_rank_by_hidden_quality_interest_and_appeal():
    core = envs.make_core("longrec/Video-v0", num_users=64)
    observation = core.reset(seed=2)
    ids, catalog = core.candidate_item_ids, core.catalog
    interest = np.take_along_axis(core.hidden_state()["interest"], catalog.topic[ids], axis=1)
    score = catalog.quality[ids] + interest - catalog.appeal[ids]
    aware = make_baseline("quality_aware", core)
    np.testing.assert_array_equal(aware.act(observation), top_k_indices(score, core.slate_size))
    noisy = QualityAgent(core, temperature=1.0)
    noisy.reset(7)
    first = noisy.act(observation)
    noisy.reset(7)
    np.testing.assert_array_equal(noisy.act(observation), first)  # seeded
    assert not np.array_equal(first, aware.act(observation))  # the noise changes some slates ...
    shown = lambda s: np.take_along_axis(score, s, axis=1).mean()  # noqa: E731
    assert shown(aware.act(observation)) >= shown(first) > shown(MyopicAgent(core).act(observation))  # ... a little


def test_slateq_trains_acts_and_round_trips(tmp_path):
    from agents.slateq import SlateQAgent, SlateQConfig, train_slateq

    logged = []
    config = SlateQConfig(learning_starts=256, batch_size=64, buffer_size=2048, hidden_dim=32)
    agent = train_slateq(
        "longrec/Video-v0", 2048, config, num_envs=32, seed=0, metrics_sink=lambda m, s: logged.append((s, m)),
        log_interval=1024,
    )
    assert [s for s, _ in logged] == [1024, 2048]
    assert np.isfinite(logged[-1][1]["losses/td_loss"]) and logged[-1][1]["charts/SPS"] > 0
    core = envs.make_core("longrec/Video-v0", num_users=8)
    observation = core.reset(seed=1)
    agent.attach(core)
    slates = agent.act(observation)
    assert_valid_slates(slates, 8, core.slate_size, core.num_candidates)
    item_values, _ = agent.values(observation)
    loaded = SlateQAgent.load(agent.save(tmp_path / "slateq.pt"), core)
    np.testing.assert_allclose(loaded.values(observation)[0], item_values, rtol=1e-6)
    np.testing.assert_array_equal(loaded.act(observation), slates)
    np.testing.assert_array_equal(make_baseline("slateq", core, path=tmp_path / "slateq.pt").act(observation), slates)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        SlateQAgent.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="td_target='td0'"):
        SlateQConfig(td_target="td0")


def test_slateq_is_privileged_in_the_registry_as_its_agent_says():
    from agents.slateq import SlateQAgent

    # it reads the simulator's true choice model (MNL utilities of hidden interest and appeal)
    assert SlateQAgent.privileged is True and AGENT_INFO["slateq"].privileged is True
