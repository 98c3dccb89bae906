"""Serving another catalog: ``set_catalog`` swaps the item table (same weights, identical outputs on identical
item texts), and a policy that meets a catalog it did not learn is refused unless told otherwise."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from agents.baselines import make_baseline
from agents.evaluate import evaluate_agent
from envs.catalog import CatalogMismatch
from llm_policy.config import SlatePolicyConfig
from llm_policy.model import SlateModel
from llm_policy.sb3_policy import LLMSlatePolicy, slate_spaces

TINY = SlatePolicyConfig(d_model=16, n_encoder_layers=1, n_encoder_heads=2, n_decoder_layers=1, n_decoder_heads=2,
                         value_hidden=8, dropout=0.0)


def observation(ids: np.ndarray, candidates: np.ndarray, num_items: int) -> dict[str, torch.Tensor]:
    """One user's observation: ``ids`` clicked in the history (padding after them), the given candidates."""
    h = 6
    hist = np.full((1, h), num_items)
    hist[0, : len(ids)] = ids
    responses = np.zeros((1, h), dtype=np.int64)
    responses[0, : len(ids)] = 2
    return {"history_item_ids": torch.as_tensor(hist), "history_responses": torch.as_tensor(responses),
            "history_consumption": torch.full((1, h), 0.5), "candidate_item_ids": torch.as_tensor(candidates[None]),
            "context": torch.full((1, 4), 0.25)}


@pytest.mark.parametrize("item_ids", [False, True])
def test_same_weights_on_a_permuted_catalog_give_identical_outputs(item_ids):
    """The new catalog holds the same item texts under other ids: every score and value is the same."""
    torch.manual_seed(0)
    n = 40
    emb = torch.randn(n, 8)
    model = SlateModel(TINY if not item_ids else SlatePolicyConfig(**{**TINY.to_dict(), "item_id_embeddings": True}),
                       emb, context_dim=4).eval()
    if item_ids:  # learned id vectors belong to the old ids: off for the comparison, as set_catalog turns them off
        model.item_id_active[:] = False
    history, candidates = np.array([3, 17, 25]), np.array([1, 5, 9, 30, 39, 12])
    before = model.encode(observation(history, candidates, n))
    scores, value = model.candidate_scores(before), model.value(before)

    perm = torch.randperm(n)  # new id j holds the old item perm[j]
    new_id = torch.empty(n, dtype=torch.long)
    new_id[perm] = torch.arange(n)
    model.set_catalog(emb[perm], catalog="permuted")
    assert model.num_items == n and model.catalog == "permuted"
    after = model.encode(observation(new_id[history].numpy(), new_id[candidates].numpy(), n))
    torch.testing.assert_close(model.candidate_scores(after), scores)
    torch.testing.assert_close(model.value(after), value)


def test_set_catalog_changes_the_catalog_size_and_turns_id_vectors_off():
    model = SlateModel(SlatePolicyConfig(**{**TINY.to_dict(), "item_id_embeddings": True}), torch.randn(30, 8), 4)
    model.set_catalog(torch.randn(50, 8))
    assert model.num_items == 50 and model.item_embeddings.shape == (51, 8)
    assert not model.item_id_active.any() and model.item_id_embedding.num_embeddings == 51
    with pytest.raises(ValueError, match="embed its texts with the text encoder the model was trained with"):
        model.set_catalog(torch.randn(50, 5))


def test_a_policy_serves_another_preset_after_set_catalog(tmp_path):
    """A policy built for Video-v0 (2,000 items, slates of 5) acts on News-v0 (3,000 items, slates of 8)."""
    video = gym.make("longrec/Video-v0", disable_env_checker=True)
    policy = LLMSlatePolicy(video.observation_space, video.action_space, lambda _: 3e-4,
                            item_embeddings=torch.randn(2000, 8), model_config=TINY)
    news = envs.make_core("longrec/News-v0")
    obs_space, act_space = slate_spaces(N=3000, H=24, C=30, D=4, K=8)
    policy.set_catalog(torch.randn(3000, 8), news.catalog.fingerprint(), obs_space, act_space)
    assert policy.model.catalog == news.catalog.fingerprint() and policy.sizes["K"] == 8
    row = evaluate_agent(make_baseline("pctr_greedy", news, policy=policy), "longrec/News-v0", num_users=3,
                         progress=False).row
    assert np.isfinite(row["return"])
    saved = policy.save_pretrained(tmp_path / "news_policy")
    assert LLMSlatePolicy.from_pretrained(saved).model.catalog == news.catalog.fingerprint()


def test_a_policy_refuses_a_catalog_it_did_not_learn(tmp_path):
    core_a = envs.make_core("longrec/Video-v0", num_items=200)
    core_b = envs.make_core("longrec/Video-v0", num_items=200, catalog_seed=1)
    assert core_a.catalog.fingerprint() != core_b.catalog.fingerprint()
    model = SlateModel(TINY, torch.randn(200, 8), context_dim=4)
    model.catalog = core_a.catalog.fingerprint()
    model.obs_sizes = {"N": 200, "H": 20, "C": 20, "D": 4, "K": 5}
    folder = model.save_pretrained(tmp_path / "a")
    make_baseline("pctr_greedy", core_a, path=folder)  # its own catalog: fine
    with pytest.raises(CatalogMismatch, match="its item ids would name other items; serve it the new items with "
                                              "policy.set_catalog"):
        make_baseline("pctr_greedy", core_b, path=folder)


def test_an_id_policy_refuses_a_new_catalog_unless_told_to_map_ids(tmp_path):
    from agents.config import PPOConfig
    from agents.ppo import train_ppo

    kwargs = {"num_items": 200}
    config = PPOConfig(n_steps=8, batch_size=32, n_epochs=1, mlp_embedding_dim=4, mlp_net_arch=(16,))
    result = train_ppo(config, 64, env_id="longrec/Video-v0", env_kwargs=kwargs, policy="mlp", num_envs=4, seed=0)
    result.model.save(tmp_path / "mlp.zip")
    other = envs.make_core("longrec/Video-v0", catalog_seed=1, **kwargs)
    with pytest.raises(CatalogMismatch, match="pass map_ids=True"):
        make_baseline("ppo_mlp", other, path=tmp_path / "mlp.zip")
    agent = make_baseline("ppo_mlp", other, path=tmp_path / "mlp.zip", map_ids=True)  # the no-transfer baseline
    row = evaluate_agent(agent, "longrec/Video-v0", num_users=3, env_kwargs={"catalog_seed": 1, **kwargs},
                         progress=False).row
    assert np.isfinite(row["return"])
