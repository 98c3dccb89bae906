"""The production logger (``agents.logger``) and the one-step greedy reference ``watch_greedy``."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from agents.baselines import make_baseline
from agents.evaluate import evaluate_agent
from agents.logger import LoggerConfig, ProductionLogger
from agents.registry import AGENT_INFO

SMALL = LoggerConfig(exploration_users=64)


def test_logger_reads_no_hidden_state():
    """The fitted logger keeps only visible features and click-model weights: no simulator, catalog or user model."""
    from envs.catalog import Catalog
    from envs.core import BatchedSimulator

    core = envs.make_core("longrec/Video-v0", num_users=32)
    logger = ProductionLogger(core, SMALL)
    held = [*vars(logger).values(), *vars(logger.features).values()]
    assert not any(isinstance(value, BatchedSimulator | Catalog) or value is core.user_model for value in held)
    # its item features are a function of the visible texts and popularity alone
    twin = type(logger.features)(core.catalog.texts, core.catalog.popularity.copy(), SMALL.text_dims, SMALL.seed)
    np.testing.assert_array_equal(twin.item_embedding, logger.features.item_embedding)
    observation = core.reset(seed=3)
    slates = logger.act(observation)

    def forbidden(*args, **kwargs):
        raise AssertionError("the production logger must not read the simulator's hidden state or true model")

    core.hidden_state = forbidden
    core.candidate_utilities = forbidden
    np.testing.assert_array_equal(logger.act(observation), slates)
    assert AGENT_INFO["logger"].privileged is False and ProductionLogger.privileged is False


def test_logger_click_model_ranks_like_the_true_click_utilities():
    from scipy.stats import spearmanr

    core = envs.make_core("longrec/Video-v0", num_users=64)
    logger = ProductionLogger(core, SMALL)
    observation = core.reset(seed=3)
    truth = core.candidate_utilities()  # the test may read the true model; the logger never does
    correlation = np.mean([spearmanr(a, b)[0] for a, b in zip(logger.click_logits(observation), truth, strict=True)])
    assert correlation > 0.25


def test_logger_is_a_click_maximiser_that_falls_into_the_clickbait_trap():
    logger, random, watch = (evaluate_agent(name, "longrec/Video-v0", num_users=200, seeds=[7], progress=False).row
                             for name in ("logger", "random", "watch_greedy"))
    assert logger["ctr"] > random["ctr"] + 0.05  # it learned what gets clicked ...
    assert logger["return"] < random["return"]  # ... which is clickbait: fewer minutes over a life
    # the true model's one-step expected-reward greedy is far above both (and privileged)
    assert watch["return"] > 2.5 * random["return"] and AGENT_INFO["watch_greedy"].privileged


def test_logger_is_deterministic_and_its_fit_does_not_depend_on_the_run():
    core = envs.make_core("longrec/InterestEvolution-v0", num_users=16)
    a, b = ProductionLogger(core, SMALL), make_baseline("logger", core, config=SMALL)
    observation = core.reset(seed=1)
    np.testing.assert_array_equal(a.act(observation), b.act(observation))
    np.testing.assert_allclose(a.item_weights, b.item_weights)
    slates = a.act(observation)
    assert slates.shape == (16, core.slate_size) and all(len(set(row)) == core.slate_size for row in slates.tolist())


def test_watch_greedy_maximises_this_steps_expected_reward():
    """On a slate of one, the chosen candidate has the largest P(click) * E[minutes] under the true model."""
    core = envs.make_core("longrec/Video-v0", num_users=64, slate_size=1)
    core.reset(seed=0)
    agent = make_baseline("watch_greedy", core)
    values, no_click = agent.item_values()
    assert np.all(no_click == 0)
    chosen = agent.act(core.observation())[:, 0]
    utilities = core.candidate_utilities()
    bias = core.position_bias[0]
    no_click_u = core.user_model.no_click_utility(core._state)
    expected = values * np.exp(utilities + bias) / (np.exp(no_click_u)[:, None] + np.exp(utilities + bias))
    np.testing.assert_array_equal(chosen, expected.argmax(axis=1))


@pytest.mark.parametrize("name", ["logger", "watch_greedy"])
def test_new_agents_are_evaluable_by_name(name):
    row = evaluate_agent(name, "longrec/News-v0", num_users=8, seeds=[0], progress=False).row
    assert np.isfinite(row["return"]) and row["agent"] == name
