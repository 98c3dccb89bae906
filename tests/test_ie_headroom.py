"""benchmarks/ie_headroom.py: the privileged references that split InterestEvolution's hidden state."""

from __future__ import annotations

import numpy as np
import pytest

from envs.registration import make_core
from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def headroom():
    return load_benchmark("ie_headroom")


def test_references_order_and_quality_only_shows_the_best_candidates(headroom, capsys):
    report = headroom.main(["--users", "60", "--seed", "3", "--per-cluster"])
    rows = report["agents"]
    assert set(rows) == {"oracle", "interest_posterior", "quality_only", "random"}
    assert rows["quality_only"]["return"] > 1.5 * rows["random"]["return"]
    assert rows["oracle"]["return"] > rows["random"]["return"] + 50
    # with every interest at 0 the oracle's value ranks by quality alone: the slate is the best two on offer
    assert rows["quality_only"]["shown_quality"] == pytest.approx(rows["quality_only"]["best_two_quality"], abs=0.02)
    assert rows["random"]["shown_quality"] < 0 < rows["oracle"]["clicked_quality"]
    assert all(row["privileged"] for name, row in rows.items() if name != "random")
    out = capsys.readouterr().out
    assert "interest_posterior†" in out and "P(shown | a candidate), by cluster" in out
    # per cluster (ids ordered by mean quality): random shows 2 of 10 candidates whatever the cluster;
    # quality_only never shows the trashiest cluster and nearly always the most nutritious one
    assert np.allclose(rows["random"]["shown_given_offered"], 0.2, atol=0.06)
    assert rows["quality_only"]["shown_given_offered"][0] == 0.0
    assert rows["quality_only"]["shown_given_offered"][-1] > 0.9
    assert headroom.main(["--users", "60", "--seed", "3", "--per-cluster"])["agents"] == rows  # same seed, same numbers


def test_interest_estimate_counts_the_users_clicks_per_cluster(headroom):
    core = make_core(headroom.ENV_ID, num_users=8)
    agent = headroom.InterestEstimateAgent(core)
    observation = core.reset(seed=0)
    agent.reset(0)
    assert np.all(agent.interests() == 0.0)  # the prior: a click rate of 1/4 is interest 0
    clicks = np.zeros(8)
    for _ in range(5):
        result = core.step(agent.act(observation))
        clicks += result.info["clicked_position"] >= 0
        observation = result.observation
    agent.act(observation)  # counts the fifth slate
    np.testing.assert_array_equal(agent.shown.sum(axis=1), np.full(8, 10.0))
    np.testing.assert_array_equal(agent.clicks.sum(axis=1), clicks)
    assert np.all(np.abs(agent.interests()) <= 1.0)


def test_interest_estimate_refuses_other_user_models(headroom):
    with pytest.raises(ValueError, match="InterestEvolution"):
        headroom.InterestEstimateAgent(make_core("longrec/Video-v0", num_users=2))
