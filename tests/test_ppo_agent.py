"""PPO agents: tiny end-to-end CE pretraining -> PPO with KL, metric keys, MLP slates, reward shaping, the update's direction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

import envs
from agents.baselines import PolicyAgent, make_baseline
from agents.evaluate import evaluate_agent
from agents.kl import KLConfig, kl_estimate
from agents.logs import generate_logs
from agents.ppo import PPOConfig, build_ppo, train_ppo

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
        config=PretrainConfig(target="slate", epochs=2, batch_size=128, max_batches_per_epoch=6, patience=5,
                              val_fraction=0.2),
        model_config=SlatePolicyConfig(**TINY_MODEL),
        output_dir=root / "pretrain",
        progress=False,
    )
    return result


TINY_PPO = PPOConfig(n_steps=8, batch_size=64, n_epochs=2)
SETUP = dict(env_id=ENV, env_kwargs=ENV_KWARGS, num_envs=16, device="cpu", seed=1)
"""what to train on: the keyword arguments of build_ppo / train_ppo"""


def test_ce_pretrain_then_ppo_with_kl_end_to_end(pretrained):
    assert pretrained.best_dir is not None
    assert pretrained.metrics["val/ndcg@10"] > pretrained.metrics["val_before/ndcg@10"]  # CE learned the logs
    logged = []
    config = dataclasses.replace(TINY_PPO, learning_rate=3e-3)
    result = train_ppo(config, 256, pretrained_path=str(pretrained.best_dir), kl=KLConfig(coef=0.1),
                       metrics_sink=lambda metrics, step: logged.append((step, metrics)), **SETUP)
    assert result.num_timesteps == 256 and not result.interrupted
    steps = [step for step, _ in logged]
    assert steps == [128, 256]
    first, last = logged[0][1], logged[-1][1]
    for key in (*STABLE_KEYS, "kl/ref", "kl/coef"):
        assert key in last and np.isfinite(last[key]), key
    # the first rollout is sampled by the reference policy itself: its KL is 0
    assert abs(first["kl/ref"]) < 1e-4 and last["kl/coef"] == 0.1
    assert last["kl/ref"] > first["kl/ref"]  # one update later the policy has moved away
    # the PPO policy and the pCTR-greedy (pretrained, no RL) baseline evaluate on the same users as random
    rows = {}
    for name in ("ppo", "pctr_greedy", "random"):
        if name == "ppo":
            agent = PolicyAgent(result.model.policy)
        elif name == "pctr_greedy":
            agent = make_baseline("pctr_greedy", envs.make_core(ENV, num_users=24, **ENV_KWARGS),
                                  path=pretrained.best_dir)
        else:
            agent = "random"
        rows[name] = evaluate_agent(agent, ENV, num_users=24, env_kwargs=ENV_KWARGS, progress=False).row
    assert rows["pctr_greedy"]["env_steps"] > 24 and rows["ppo"]["env_steps"] > 24  # lives went past one step
    # the same users and seeds: the learned policies' slates are not random ones (a different return), and the
    # greedy pretrained policy is deterministic (a second evaluation gives the same numbers)
    assert rows["pctr_greedy"]["return"] != rows["random"]["return"] != rows["ppo"]["return"]
    again = evaluate_agent(make_baseline("pctr_greedy", envs.make_core(ENV, num_users=24, **ENV_KWARGS),
                                         path=pretrained.best_dir), ENV, num_users=24, env_kwargs=ENV_KWARGS,
                           progress=False).row
    assert again["return"] == rows["pctr_greedy"]["return"]


def test_reference_equals_initial_policy_and_kl_shapes_rewards(pretrained):
    kl = KLConfig(coef=0.5)
    model = build_ppo(TINY_PPO, pretrained_path=str(pretrained.best_dir), kl=kl, **SETUP)
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(model.reference.state_dict()[key], value)
    assert not any(p.requires_grad for p in model.reference.parameters())
    # move the policy away from the frozen reference, so that the rollout's KL is not 0
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    recorded = {}
    shape = model._shape_rewards_with_kl

    def spy(buffer):
        recorded["raw"] = buffer.rewards.copy()
        shape(buffer)
        recorded["shaped"] = buffer.rewards.copy()
        recorded["log_probs"] = buffer.log_probs.copy()
        recorded["actions"] = buffer.actions.copy()
        recorded["observations"] = {k: v.copy() for k, v in buffer.observations.items()}

    model._shape_rewards_with_kl = spy
    model.learn(total_timesteps=SETUP["num_envs"] * TINY_PPO.n_steps)  # one rollout (shaped), one update
    n = recorded["raw"].size
    obs = {k: torch.as_tensor(v.reshape(n, *v.shape[2:])) for k, v in recorded["observations"].items()}
    with torch.no_grad():
        logq = model.reference.evaluate_actions(obs, torch.as_tensor(recorded["actions"].reshape(n, -1)))[1]
    logp = torch.as_tensor(recorded["log_probs"].reshape(-1))
    expected_kl = kl_estimate(logp, logq.reshape(-1), "k1").numpy().reshape(recorded["raw"].shape)
    assert expected_kl.mean() > 0.01  # the policies differ, so the penalty is not trivially 0
    np.testing.assert_allclose(recorded["shaped"], recorded["raw"] - kl.coef * expected_kl, rtol=1e-5, atol=1e-5)
    assert model.kl_metrics["kl/ref"] == pytest.approx(float(expected_kl.mean()), rel=1e-4)
    no_kl = build_ppo(TINY_PPO, pretrained_path=str(pretrained.best_dir), **SETUP)
    assert no_kl.reference is None and no_kl.kl_controller is None


def test_ppo_update_raises_the_log_prob_of_advantaged_actions():
    """One rollout and one PPO update (fixed seed): actions with a positive advantage become likelier than the rest."""
    model = build_ppo(dataclasses.replace(TINY_PPO, learning_rate=3e-3, n_epochs=4), policy="mlp", **SETUP)
    model.learn(total_timesteps=SETUP["num_envs"] * TINY_PPO.n_steps)
    buffer = model.rollout_buffer  # the rollout the update used (flattened by it), its advantages and old log-probs
    n = buffer.buffer_size * buffer.n_envs
    assert buffer.generator_ready and len(buffer.actions) == n
    obs = {k: torch.as_tensor(v) for k, v in buffer.observations.items()}
    with torch.no_grad():
        new = model.policy.evaluate_actions(obs, torch.as_tensor(buffer.actions.reshape(n, -1)))[1].numpy()
    change = new - buffer.log_probs.reshape(-1)
    advantage = buffer.advantages.reshape(-1)
    rewarded, other = change[advantage > 0].mean(), change[advantage <= 0].mean()
    assert rewarded > 0 > other and rewarded > other + 0.5, (rewarded, other)  # measured: +0.66 vs -2.39


def test_mlp_policy_trains_and_gives_distinct_slates():
    logged = []
    config = dataclasses.replace(TINY_PPO, mlp_net_arch=(32,))
    result = train_ppo(config, 256, policy="mlp", metrics_sink=lambda m, s: logged.append(m), **SETUP)
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
        build_ppo(TINY_PPO, policy="transformer", **SETUP)
    with pytest.raises(ValueError, match="pretrained_path is for policy='llm'"):
        build_ppo(TINY_PPO, policy="mlp", pretrained_path="x", **SETUP)
    with pytest.raises(ValueError, match=r"PPOConfig.n_steps=0 must be >= 1"):
        PPOConfig(n_steps=0)
    with pytest.raises(ValueError, match="total_timesteps=0 must be >= 1"):
        train_ppo(TINY_PPO, 0, policy="mlp", **SETUP)


def test_periodic_evaluation_meets_the_same_held_out_users_every_time(pretrained):
    """``ppo.eval_every``: the learning curve is the greedy policy on fixed held-out users, at 0, every k steps and the end."""
    config = dataclasses.replace(TINY_PPO, eval_every=256, eval_users=12)
    rows = []
    result = train_ppo(config, 512, pretrained_path=str(pretrained.best_dir), eval_seed=77,
                       metrics_sink=lambda metrics, step: rows.append((step, metrics)), **SETUP)
    curve = [(step, m["heldout/return"], m["heldout/return_ci95"]) for step, m in rows if "heldout/return" in m]
    steps = [step for step, _, _ in curve]
    assert steps[0] == 0 and steps[-1] == result.num_timesteps and len(steps) >= 3 and steps == sorted(set(steps))
    assert all(np.isfinite(ret) and half >= 0 for _, ret, half in curve)
    # the first point is the pretrained policy on those users; the last, the trained one
    from llm_policy import LLMSlatePolicy

    start = LLMSlatePolicy.from_pretrained(pretrained.best_dir)
    first = evaluate_agent(PolicyAgent(start), ENV, num_users=12, seeds=[77], env_kwargs=ENV_KWARGS, progress=False)
    last = evaluate_agent(PolicyAgent(result.model.policy), ENV, num_users=12, seeds=[77], env_kwargs=ENV_KWARGS,
                          progress=False)
    assert curve[0][1] == pytest.approx(first.row["return"]) and curve[-1][1] == pytest.approx(last.row["return"])


def test_keep_best_ends_with_the_weights_of_the_best_validation_evaluation(tmp_path):
    """``ppo.keep_best``: model selection on validation users (seeded apart from the final evaluation's)."""
    from agents.ppo import VALIDATION_SEED_OFFSET

    with pytest.raises(ValueError, match="keep_best=True needs eval_every > 0"):
        PPOConfig(keep_best=True)
    config = dataclasses.replace(TINY_PPO, eval_every=64, eval_users=8, keep_best=True)
    rows = []
    result = train_ppo(config, 512, policy="mlp", eval_seed=77, checkpoint_dir=tmp_path,
                       metrics_sink=lambda metrics, step: rows.append((step, metrics)), **SETUP)
    curve = [(step, m["heldout/return"]) for step, m in rows if "heldout/return" in m]
    best_step, best_return = max(curve, key=lambda point: point[1])
    assert result.selected_step == best_step and best_step != curve[-1][0]  # here the last weights are not the best
    validation = evaluate_agent(PolicyAgent(result.model.policy), ENV, num_users=8, seeds=[77 + VALIDATION_SEED_OFFSET],
                                env_kwargs=ENV_KWARGS, progress=False)
    assert validation.row["return"] == pytest.approx(best_return)  # the model now holds the best weights
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["step"] == best_step and saved["return"] == pytest.approx(best_return)
    plain = train_ppo(dataclasses.replace(config, keep_best=False), 512, policy="mlp", eval_seed=77, **SETUP)
    assert plain.selected_step is None


def test_keep_best_remembers_the_best_weights_across_a_resume(tmp_path):
    """A run resumed from its checkpoint still knows the best evaluation before the stop (``best.pt``)."""
    config = dataclasses.replace(TINY_PPO, eval_every=64, eval_users=8, keep_best=True, checkpoint_every=64)
    whole = train_ppo(config, 512, policy="mlp", eval_seed=77, **SETUP)
    rows = []
    first = train_ppo(config, 384, policy="mlp", eval_seed=77, checkpoint_dir=tmp_path,
                      metrics_sink=lambda metrics, step: rows.append((step, metrics)), **SETUP)
    resumed = train_ppo(config, 512, policy="mlp", eval_seed=77, checkpoint_dir=tmp_path,
                        metrics_sink=lambda metrics, step: rows.append((step, metrics)), **SETUP)
    assert resumed.resumed_from == first.num_timesteps == 384
    curve = {step: m["heldout/return"] for step, m in rows if "heldout/return" in m}
    assert resumed.selected_step == max(curve, key=curve.get) == whole.selected_step < 384  # chosen before the stop
    for kept, uninterrupted in zip(resumed.model.policy.parameters(), whole.model.policy.parameters(), strict=True):
        assert torch.equal(kept, uninterrupted)


class _WeightsAtRolloutStart(BaseCallback):
    """Records the policy's raw weights before every rollout (after the previous update)."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[dict[str, torch.Tensor]] = []

    def _on_rollout_start(self) -> None:
        self.states.append({key: value.detach().clone() for key, value in self.model.policy.state_dict().items()})

    def _on_step(self) -> bool:
        return True


def test_ema_decay_ends_with_the_moving_average_of_the_weights(tmp_path):
    """``ppo.ema_decay``: the run ends with ``decay``-weighted averages of the initial and every updated weights."""
    with pytest.raises(ValueError, match=r"PPOConfig.ema_decay=1.0 must be >= 0.0 and < 1.0"):
        PPOConfig(ema_decay=1.0)
    recorder = _WeightsAtRolloutStart()
    result = train_ppo(dataclasses.replace(TINY_PPO, ema_decay=0.5), 256, policy="mlp", checkpoint_dir=tmp_path,
                       callbacks=[recorder], **SETUP)  # 2 updates of 16 users x 8 steps
    initial, after_first = recorder.states
    raw_last = torch.load(tmp_path / "last.pt", weights_only=False)["policy"]  # the checkpoint keeps the raw weights
    final = result.model.policy.state_dict()
    changed = 0
    for key, value in final.items():
        if value.is_floating_point():
            expected = 0.25 * initial[key] + 0.25 * after_first[key] + 0.5 * raw_last[key]
            torch.testing.assert_close(value, expected)
            changed += int(not torch.equal(value, raw_last[key]))
    assert changed > 0  # the average is not the last weights


def test_ema_decay_evaluates_the_average_and_resumes_exactly(tmp_path):
    """The held-out curve scores the averaged weights; a resumed run ends with the same average as an unbroken one."""
    config = dataclasses.replace(TINY_PPO, ema_decay=0.8, eval_every=128, eval_users=8, checkpoint_every=128)
    rows = []
    whole = train_ppo(config, 512, policy="mlp", eval_seed=77,
                      metrics_sink=lambda metrics, step: rows.append((step, metrics)), **SETUP)
    last = [m["heldout/return"] for step, m in rows if "heldout/return" in m][-1]
    final = evaluate_agent(PolicyAgent(whole.model.policy), ENV, num_users=8, seeds=[77], env_kwargs=ENV_KWARGS,
                           progress=False)
    assert final.row["return"] == pytest.approx(last)  # the curve's last point is the average the run ends with
    train_ppo(config, 256, policy="mlp", eval_seed=77, checkpoint_dir=tmp_path, **SETUP)
    resumed = train_ppo(config, 512, policy="mlp", eval_seed=77, checkpoint_dir=tmp_path, **SETUP)
    assert resumed.resumed_from == 256
    for kept, uninterrupted in zip(resumed.model.policy.parameters(), whole.model.policy.parameters(), strict=True):
        assert torch.equal(kept, uninterrupted)


def test_periodic_evaluation_leaves_training_unchanged():
    """The held-out evaluations do not touch the training's random streams: same parameters with or without them."""
    def final_parameters(eval_every: int) -> list[torch.Tensor]:
        config = dataclasses.replace(TINY_PPO, eval_every=eval_every, eval_users=4)
        model = train_ppo(config, 512, policy="mlp", **SETUP).model
        return [p.detach().clone() for p in model.policy.parameters()]

    for with_eval, without in zip(final_parameters(128), final_parameters(0), strict=True):
        assert torch.equal(with_eval, without)


def test_entropy_bonus_anneals_linearly_by_environment_step():
    from agents.ppo import entropy_coefficient

    config = PPOConfig(ent_coef=0.02, ent_coef_final=0.004, ent_anneal_steps=1000)
    assert [entropy_coefficient(config, step) for step in (0, 500, 1000, 5000)] == pytest.approx([0.02, 0.012, 0.004, 0.004])
    assert entropy_coefficient(PPOConfig(ent_coef=0.01), 10**6) == 0.01  # no schedule: constant
    # each update uses the value at its step; the metrics report it
    rows = []
    config = dataclasses.replace(TINY_PPO, ent_coef=0.02, ent_coef_final=0.0, ent_anneal_steps=512)
    train_ppo(config, 512, policy="mlp", metrics_sink=lambda metrics, step: rows.append((step, metrics)), **SETUP)
    reported = [(step, m["charts/ent_coef"]) for step, m in rows if "charts/ent_coef" in m]
    assert [coef for _, coef in reported] == pytest.approx([0.02 * (1 - step / 512) for step, _ in reported])
    assert len({coef for _, coef in reported}) >= 2


def test_learning_rate_anneals_linearly_by_environment_step():
    from agents.ppo import learning_rate_at

    config = PPOConfig(learning_rate=1e-3, learning_rate_final=1e-4, lr_anneal_steps=1000)
    assert [learning_rate_at(config, step) for step in (0, 500, 1000, 5000)] == pytest.approx([1e-3, 5.5e-4, 1e-4, 1e-4])
    assert learning_rate_at(PPOConfig(learning_rate=2e-4), 10**6) == 2e-4  # no schedule: constant
    # each update steps with the rate of its step (not of SB3's per-learn-call progress); the metrics report it
    rows = []
    config = dataclasses.replace(TINY_PPO, learning_rate=1e-3, learning_rate_final=0.0, lr_anneal_steps=512)
    train_ppo(config, 512, policy="mlp", metrics_sink=lambda metrics, step: rows.append((step, metrics)), **SETUP)
    reported = [(step, m["charts/learning_rate"]) for step, m in rows if "charts/learning_rate" in m]
    assert [rate for _, rate in reported] == pytest.approx([1e-3 * (1 - step / 512) for step, _ in reported])
    assert len({rate for _, rate in reported}) >= 2
