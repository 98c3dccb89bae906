"""PPO agents: tiny end-to-end CE pretraining -> PPO with KL, metric keys, MLP slates, reward shaping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import envs
from agents.baselines import PolicyAgent, make_baseline
from agents.evaluate import evaluate_agent
from agents.kl import KLConfig
from agents.ppo import PPOConfig, build_ppo, train_ppo
from envs.logging_policy import generate_logs

ENV = "longrec/Video-v0"
ENV_KWARGS = {"num_items": 120, "horizon_days": 3}
STABLE_KEYS = ("charts/episodic_return", "charts/SPS", "losses/approx_kl", "losses/clipfrac",
               "losses/explained_variance")
TINY_MODEL = dict(d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_encoder_heads=2, n_decoder_heads=2,
                  value_hidden=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """CE-pretrain a tiny LLM policy on logs of the simulator.

    Item embeddings are seeded random vectors standing in for text embeddings (the text
    encoder has its own tests; loading even a tiny BERT costs more than this whole file).
    """
    from llm_policy import SlatePolicyConfig
    from llm_policy.pretrain import PretrainConfig, pretrain

    root = tmp_path_factory.mktemp("e2e")
    num_items = envs.make_core(ENV, **ENV_KWARGS).catalog.num_items
    embeddings = torch.randn(num_items, 24, generator=torch.Generator().manual_seed(0))
    logs = generate_logs(ENV, num_users=40, seed=0, behaviour="noisy_quality", **ENV_KWARGS)
    result = pretrain(
        logs,
        embeddings,
        config=PretrainConfig(epochs=2, batch_size=128, max_batches_per_epoch=6, progress=False, patience=5),
        model_config=SlatePolicyConfig(**TINY_MODEL),
        output_dir=root / "pretrain",
    )
    return result


def tiny_config(**overrides) -> PPOConfig:
    base = PPOConfig(
        env_id=ENV, env_kwargs=dict(ENV_KWARGS), total_steps=256, num_envs=16, n_steps=8, batch_size=64,
        n_epochs=2, device="cpu", seed=1,
    )
    return dataclasses.replace(base, **overrides)


def test_ce_pretrain_then_ppo_with_kl_end_to_end(pretrained):
    assert pretrained.best_dir is not None
    logged = []
    config = tiny_config(pretrained_path=str(pretrained.best_dir), kl=KLConfig(coef=0.1, estimator="k3"),
                         learning_rate=3e-3)
    result = train_ppo(config, metrics_sink=lambda metrics, step: logged.append((step, metrics)))
    assert result.num_timesteps == 256 and not result.interrupted
    steps = [step for step, _ in logged]
    assert steps == [128, 256]
    first, last = logged[0][1], logged[-1][1]
    for key in (*STABLE_KEYS, "kl/ref", "kl/coef"):
        assert key in last and np.isfinite(last[key]), key
    # the first rollout is sampled by the reference policy itself: its KL is 0
    assert abs(first["kl/ref"]) < 1e-4 and last["kl/coef"] == 0.1
    assert last["kl/ref"] > first["kl/ref"]  # one update later the policy has moved away
    # the PPO policy and the pCTR-greedy (pretrained, no RL) baseline both evaluate
    ppo_row = evaluate_agent(PolicyAgent(result.model.policy), ENV, num_users=24, env_kwargs=ENV_KWARGS,
                             progress=False).row
    core = envs.make_core(ENV, num_users=24, **ENV_KWARGS)
    pctr = make_baseline("pctr_greedy", core, path=pretrained.best_dir)
    pctr_row = evaluate_agent(pctr, ENV, num_users=24, env_kwargs=ENV_KWARGS, progress=False).row
    assert ppo_row["return"] > 0 and pctr_row["return"] > 0 and pctr_row["env_steps"] > 24


def test_reference_equals_initial_policy_and_kl_shapes_rewards(pretrained):
    config = tiny_config(pretrained_path=str(pretrained.best_dir), kl=KLConfig(coef=0.5), total_steps=128)
    model = build_ppo(config)
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(model.reference.state_dict()[key], value)
    assert not any(p.requires_grad for p in model.reference.parameters())
    train_ppo(config)  # smoke: one rollout, one update, reference frozen
    no_kl = build_ppo(tiny_config(pretrained_path=str(pretrained.best_dir)))
    assert no_kl.reference is None and no_kl.kl_controller is None


def test_mlp_policy_trains_and_gives_distinct_slates():
    logged = []
    result = train_ppo(tiny_config(policy="mlp", mlp_net_arch=(32,)), metrics_sink=lambda m, s: logged.append(m))
    for key in STABLE_KEYS[1:]:
        assert key in logged[-1]
    core = envs.make_core(ENV, num_users=64, **ENV_KWARGS)
    observation = core.reset(seed=0)
    slates = PolicyAgent(result.model.policy).act(observation)
    assert slates.shape == (64, core.slate_size)
    ordered = np.sort(slates, axis=1)
    assert not (ordered[:, 1:] == ordered[:, :-1]).any()
    core.step(slates)  # valid in the default duplicate_mode="error"


def test_config_errors_name_valid_values():
    with pytest.raises(ValueError, match="policy='transformer'.*valid"):
        PPOConfig(policy="transformer")
    with pytest.raises(ValueError, match="pretrained_path is for policy='llm'"):
        PPOConfig(policy="mlp", pretrained_path="x")
    assert PPOConfig(kl={"coef": 0.2, "target": 0.01}).kl == KLConfig(coef=0.2, target=0.01)
