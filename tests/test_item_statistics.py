"""Logged item statistics (``agents.item_statistics``): numbers from logged responses only, the policy's
item features, catalog swaps, the completion-greedy reference and the pipeline that builds them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agents.baselines import make_baseline
from agents.item_statistics import (
    ITEM_STATISTICS,
    CompletionGreedyAgent,
    logged_item_statistics,
    with_item_statistics,
)
from agents.logs import generate_logs
from envs.registration import make_core
from experiments import cli, jobs
from llm_policy import SlatePolicyConfig
from llm_policy.model import SlateModel


def visible_log(shown, clicked, consumption):
    """Only the three arrays the statistics may read: any other attribute access is an AttributeError."""
    return SimpleNamespace(slate_item_ids=np.asarray(shown), clicked_item_id=np.asarray(clicked),
                           consumption=np.asarray(consumption, dtype=np.float32))


def test_statistics_of_a_small_log_by_hand():
    # items 0-3 shown; 0 clicked twice, fully watched; 1 clicked once, barely watched; 2 never clicked; 4 never shown
    log = visible_log(shown=[[0, 1], [0, 2], [1, 2], [0, 3]], clicked=[0, 1, -1, 0], consumption=[1.0, 0.1, 0.0, 0.9])
    stats = logged_item_statistics(log, num_items=5, prior=1.0)
    assert stats.shape == (5, len(ITEM_STATISTICS)) and stats.dtype == np.float32
    fractions = np.array([1.0, 0.1, 0.9])
    mean, sd = fractions.mean(), fractions.std()
    assert stats[0, 0] == pytest.approx(((1.9 + mean) / 3 - mean) / sd, rel=1e-5)
    assert stats[1, 0] == pytest.approx(((0.1 + mean) / 2 - mean) / sd, rel=1e-5)
    assert stats[2, 0] == pytest.approx(0.0, abs=1e-6)  # shown, never clicked: the log's mean completion
    rate = 3 / 8
    assert stats[0, 1] == pytest.approx(((2 + rate) / 4 - rate) / np.sqrt(rate * (1 - rate)), rel=1e-5)
    assert stats[2, 1] < 0 < stats[0, 1]  # shown twice, never clicked vs clicked twice of three
    assert stats[0, 2] == pytest.approx(1.0) and stats[1, 2] == pytest.approx(np.log(2) / np.log(3), rel=1e-5)
    assert np.all(stats[4] == 0)  # never shown: nothing logged


def test_statistics_refuse_bad_input_with_the_bad_value():
    log = visible_log(shown=[[0, 7]], clicked=[7], consumption=[0.5])
    with pytest.raises(ValueError, match="reach item 7, beyond the catalog's 5 items"):
        logged_item_statistics(log, num_items=5)
    with pytest.raises(ValueError, match="prior=0"):
        logged_item_statistics(log, num_items=10, prior=0)
    assert np.all(logged_item_statistics(visible_log([[0, 1]], [-1], [0.0]), num_items=3) == 0)  # no click at all


def test_completion_tracks_the_hidden_quality_it_never_reads():
    """From 150 random users' logs (the visible arrays only), items that were watched longer are the better ones."""
    logs = generate_logs("longrec/Video-v0", num_users=150, seed=3, behaviour="random")
    stats = logged_item_statistics(visible_log(logs.slate_item_ids, logs.clicked_item_id, logs.consumption), 2000)
    assert np.array_equal(stats, logged_item_statistics(logs, 2000))
    quality = make_core("longrec/Video-v0", num_users=1).catalog.quality
    clicked = stats[:, 2] > 0
    assert clicked.sum() > 1000
    assert np.corrcoef(stats[clicked, 0], quality[clicked])[0, 1] > 0.5


def test_features_append_the_columns_and_zeros_without_logs():
    text = np.ones((4, 6), dtype=np.float32)
    log = visible_log(shown=[[0, 1]], clicked=[0], consumption=[0.8])
    features = with_item_statistics(text, log)
    assert features.shape == (4, 9) and np.array_equal(features[:, :6], text)
    assert np.array_equal(features[:, 6:], logged_item_statistics(log, 4))
    assert np.all(with_item_statistics(text, None)[:, 6:] == 0)
    with pytest.raises(ValueError, match=r"shape \(num_items, dim\)"):
        with_item_statistics(np.ones(4), log)


def tiny_model(features, item_statistics=True):
    config = SlatePolicyConfig(d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_encoder_heads=2, n_decoder_heads=2,
                               item_statistics=item_statistics)
    return SlateModel(config, features, context_dim=4)


def test_model_reads_its_statistics_and_a_new_catalog_gets_zeros():
    torch.manual_seed(0)
    features = torch.randn(10, 8)
    model = tiny_model(features)
    assert torch.equal(model.item_statistics(), features[:, -3:])
    new_text = torch.randn(6, 5)  # a new catalog's text embeddings: nothing logged of its items
    model.set_catalog(new_text, catalog="other")
    assert model.num_items == 6 and model.item_dim == 8
    assert torch.equal(model.item_statistics(), torch.zeros(6, 3))
    assert torch.equal(model.item_embeddings[:6, :5], new_text)
    with pytest.raises(ValueError, match="without item statistics"):
        tiny_model(features, item_statistics=False).item_statistics()
    with pytest.raises(ValueError, match="only 3 columns"):
        tiny_model(torch.randn(10, 3))


def test_completion_greedy_shows_the_best_logged_candidates_first():
    agent = CompletionGreedyAgent(np.array([0.0, 2.0, -1.0, 1.0, 0.5]), slate_size=3)
    slates = agent.act({"candidate_item_ids": np.array([[0, 1, 2, 3], [4, 2, 0, 3]])})
    assert slates.tolist() == [[1, 3, 0], [3, 0, 2]]
    assert agent.privileged is False


def test_pipeline_pretrains_with_statistics_and_evaluates_completion_greedy(tmp_path, capsys):
    """``longrec train agent=completion_greedy policy.item_statistics=true``: logs -> CE pretraining over text +
    statistics -> the saved policy's statistic columns are the logs' -> the reference ranks by them."""
    code = cli.main(["train", "-c", "smoke", "agent=ce_ppo", "policy.item_statistics=true",
                     "eval.baselines=[completion_greedy,pctr_greedy]", "env.kwargs.num_items=200",
                     "--runs-dir", str(tmp_path / "train"), "--quiet"])
    assert code == 0
    (run_dir,) = list((tmp_path / "train").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["agents"]) == {"ce_ppo", "completion_greedy", "pctr_greedy"}
    # the reference on its own, from the pretrained policy, meets the same users with the same result
    code = cli.main(["train", "-c", "smoke_eval", "agent=completion_greedy", f"init_from={run_dir / summary['pretrained_policy']}",
                     "eval.baselines=[]", "env.kwargs.num_items=200", "eval.num_users=20", "--runs-dir", str(tmp_path / "ref"), "--quiet"])
    assert code == 0
    (ref_dir,) = list((tmp_path / "ref").iterdir())
    alone = json.loads((ref_dir / "summary.json").read_text())["agents"]["completion_greedy"]
    assert alone["return"] == pytest.approx(summary["agents"]["completion_greedy"]["return"])
    from agents.logs import load_logs
    from llm_policy import LLMSlatePolicy

    policy = LLMSlatePolicy.from_pretrained(run_dir / summary["pretrained_policy"])
    expected = logged_item_statistics(load_logs(run_dir / "logs.npz"), 200)
    assert np.allclose(policy.model.item_statistics().numpy(), expected)
    core = make_core("longrec/Video-v0", num_users=3, num_items=200)
    observation = core.reset(seed=0)
    slates = make_baseline("completion_greedy", core, policy=policy).act(observation)
    completion = expected[:, 0][observation["candidate_item_ids"]]
    assert np.array_equal(slates, np.argsort(-completion, axis=1, kind="stable")[:, :core.slate_size])


def test_completion_greedy_needs_statistics(tmp_path, capsys):
    assert cli.main(["train", "-c", "smoke_eval", "agent=completion_greedy", "--runs-dir", str(tmp_path), "--quiet"]) != 0
    assert "set policy.item_statistics=true" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any run folder


@pytest.mark.parametrize("opacus_installed", [True, False])
def test_private_pretraining_refuses_item_statistics(opacus_installed, tmp_path, capsys, monkeypatch):
    """DP-SGD privatises the CE weights only: item counts computed from the same logs would leak around it.
    The combination is refused whether or not Opacus is installed (it was refused only where it was)."""
    if not opacus_installed:
        def missing():
            raise ImportError("pretrain.dp needs Opacus")

        monkeypatch.setattr(jobs, "require_opacus", missing)
    assert cli.main(["pretrain", "-c", "smoke", "policy.item_statistics=true", "pretrain.dp.epsilon=3",
                     "--runs-dir", str(tmp_path), "--quiet"]) != 0
    assert "set policy.item_statistics=false for private pretraining" in capsys.readouterr().err
