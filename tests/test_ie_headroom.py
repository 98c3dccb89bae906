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


def test_a_ppo_checkpoint_file_is_measured_with_its_own_weights(headroom, tmp_path):
    import torch

    from llm_policy.config import SlatePolicyConfig
    from llm_policy.model import SlateModel

    config = SlatePolicyConfig(d_model=16, n_encoder_layers=1, n_encoder_heads=2, n_decoder_layers=1, n_decoder_heads=2,
                               value_hidden=8)
    torch.manual_seed(0)
    features = torch.randn(10_000, 8)
    run = tmp_path / "seed_0" / "runs" / "ce_ppo" / "checkpoints"
    kept = SlateModel(config, features, context_dim=3)
    kept.obs_sizes = {"N": 10_000, "H": 20, "C": 10, "D": 3, "K": 2}  # InterestEvolution's, as training records them
    kept.save_pretrained(run / "final_policy")
    torch.manual_seed(1)
    other = SlateModel(config, features, context_dim=3)
    (run / "ppo").mkdir(parents=True)
    torch.save({"state": {f"model.{k}": v for k, v in kept.state_dict().items()}}, run / "ppo" / "best.pt")
    torch.save({"policy": {f"model.{k}": v for k, v in other.state_dict().items()}}, run / "ppo" / "last.pt")
    paths = [run / "final_policy", run / "ppo" / "best.pt", run / "ppo" / "last.pt"]
    argv = ["--users", "12", "--seed", "3", *(arg for path in paths for arg in ("--policy", str(path)))]
    rows = headroom.main(argv)["agents"]
    folder, best, last = (rows[str(path)] for path in paths)
    assert best == folder  # best.pt holds the folder's weights: the same slates, the same numbers
    assert last["return"] != folder["return"]  # last.pt's own (other) weights are the ones measured
    for row in rows.values():
        assert 0 < row["discounted_return"] < row["return"]
    assert headroom.policy_label(run / "ppo" / "last.pt").endswith("/seed_0 last")
    with pytest.raises(ValueError, match="not an LLMSlatePolicy folder"):
        headroom.main(["--users", "2", "--policy", str(tmp_path / "missing.pt")])


def test_refuses_a_discount_outside_the_unit_interval(headroom, capsys):
    with pytest.raises(SystemExit):
        headroom.main(["--users", "2", "--gamma", "1.5"])
    assert "--gamma 1.5: must be in (0, 1]" in capsys.readouterr().err
