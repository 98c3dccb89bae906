"""PPO fine-tuning of the slate policy on the batched simulator, with an optional KL penalty.

The algorithm is Stable-Baselines3's PPO (Schulman et al. 2017) on
``envs.make_sb3_vec``. The policy is either

* ``policy="llm"``: ``llm_policy.LLMSlatePolicy`` (text-token state encoder +
  pointer slate decoder), initialised from a cross-entropy pretrained folder
  (``pretrained_path``) or from scratch over the item text embeddings; or
* ``policy="mlp"``: SB3's ``MultiInputPolicy`` over ``IdEmbeddingExtractor``
  (learned item-id, response and consumption embeddings, flattened into an MLP)
  with SB3's per-position categorical head: the plain ID baseline, no language
  model. Its slates may repeat a candidate, so it trains with the simulator's
  ``duplicate_mode="penalty"``; evaluation repairs repeats with its own logits
  (``agents.baselines.PolicyAgent``).

KL penalty to the reference policy (RLHF, Ziegler et al. 2019; Stiennon et al.
2020): a frozen copy of the initial (pretrained) policy ``q``; after each
rollout every step's (scaled) reward is shaped as ``r - beta * (log p(a) - log q(a))``,
Schulman's k1 on the slate actually sampled from the rollout policy ``p``, and the
returns and advantages are recomputed. k1 is the estimator whose policy gradient as
a reward is ``grad KL(p || q)`` (``E_p[grad log p * (log p - log q)]``); k3 as a
reward would push with ``grad KL(p||q) - grad KL(q||p)``, about zero near the
reference. Shaping rewards (rather than adding a loss term) keeps SB3's
``train()`` untouched and is the per-token penalty of InstructGPT; ``beta`` is
fixed or adapted toward a target KL after every rollout. Logged as ``kl/ref``
(mean per-step k1, the KL estimate the penalty uses) and ``kl/coef``.

Metrics go to SB3's logger and, through ``MetricsCallback``, to a
``metrics_sink(metrics: dict, step: int)`` with stable keys
(``charts/episodic_return``, ``charts/SPS``, ``losses/approx_kl``,
``losses/clipfrac``, ``losses/explained_variance``, ``kl/ref``, ...).
Checkpoints (``agents.checkpoint``) are written every ``checkpoint_every`` steps
at rollout boundaries and on Ctrl-C; ``train_ppo(..., resume=True)`` continues
from the last one with the same step count.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnvWrapper
from torch import nn

from agents.checkpoint import (
    atomic_torch_save,
    checkpoint_path,
    checkpoint_payload,
    find_checkpoint,
    load_checkpoint,
    restore_core_state,
    restore_model,
    restore_rng_state,
)
from agents.config import KLConfig, PPOConfig
from agents.kl import kl_estimate, make_kl_controller
from envs.catalog import check_catalog
from envs.core import BatchedSimulator
from llm_policy.config import SlatePolicyConfig
from llm_policy.device import resolve_device

POLICY_KINDS = ("llm", "mlp")
LLM_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=32, n_encoder_layers=1, n_decoder_layers=1, n_encoder_heads=2, n_decoder_heads=2,
                 value_hidden=32),
    "small": dict(d_model=64, n_encoder_layers=1, n_decoder_layers=1, value_hidden=64),
    "base": {},
}
"""named ``SlatePolicyConfig`` overrides for CPU runs (``base`` = the library defaults)"""
MetricsSink = Callable[[dict[str, float], int], None]

SB3_TO_STABLE_KEYS = {
    "train/approx_kl": "losses/approx_kl",
    "train/clip_fraction": "losses/clipfrac",
    "train/explained_variance": "losses/explained_variance",
    "train/value_loss": "losses/value_loss",
    "train/policy_gradient_loss": "losses/policy_loss",
    "train/entropy_loss": "losses/entropy_loss",
    "train/loss": "losses/loss",
}


@dataclass
class PPOResult:
    """What ``train_ppo`` returns."""

    model: PPO
    """the trained SB3 model (``model.policy`` is the policy)"""
    num_timesteps: int
    """environment steps done (including those before a resume)"""
    interrupted: bool
    """True if Ctrl-C stopped training (a checkpoint was saved first)"""
    checkpoint: Path | None
    """the last checkpoint written (or resumed from)"""
    resumed_from: int | None
    """step count of the checkpoint the run resumed from (None = fresh start)"""
    selected_step: int | None = None
    """with ``config.keep_best``: the step whose weights the model ends with (None = the last ones)"""


# -- environment ----------------------------------------------------------------------------------


class ScaleReward(VecEnvWrapper):
    """Multiply rewards by a constant for learning (``info['episode']`` keeps the raw return)."""

    def __init__(self, venv: Any, scale: float) -> None:
        super().__init__(venv)
        self.scale = float(scale)
        self.core: BatchedSimulator = venv.core

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        observation, reward, done, infos = self.venv.step_wait()
        return observation, reward * self.scale, done, infos


def make_training_env(env_id: str, num_envs: int, env_kwargs: Mapping[str, Any] | None, policy: str,
                       reward_scale: float) -> ScaleReward:
    """``envs.make_sb3_vec`` of ``num_envs`` users (penalty mode for the MLP policy), reward-scaled."""
    import envs

    kwargs = dict(env_kwargs or {})
    if policy == "mlp":
        kwargs.setdefault("duplicate_mode", "penalty")
    venv = envs.make_sb3_vec(env_id, num_envs=num_envs, **kwargs)
    return ScaleReward(venv, reward_scale)


# -- the MLP / ID policy ----------------------------------------------------------------------------


class IdEmbeddingExtractor(BaseFeaturesExtractor):
    """Flat features of the raw observation for an MLP: item ids through a learned embedding.

    SB3 would feed integer ids to an MLP as floats; here history and candidate ids go
    through one ``nn.Embedding`` (N items + padding), responses through a 3-entry
    embedding, and everything is concatenated with consumption and context.
    """

    def __init__(self, observation_space: gym.spaces.Dict, embedding_dim: int = 16) -> None:
        history = observation_space["history_item_ids"].shape[0]
        candidates = observation_space["candidate_item_ids"].shape[0]
        context = observation_space["context"].shape[0]
        num_items = int(np.max(observation_space["history_item_ids"].high))
        features = (2 * history + candidates) * embedding_dim + history + context
        super().__init__(observation_space, features_dim=features)
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=num_items)
        self.response_embedding = nn.Embedding(3, embedding_dim)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        history = observations["history_item_ids"].round().long()
        responses = observations["history_responses"].round().long()
        candidates = observations["candidate_item_ids"].round().long()
        parts = [
            self.item_embedding(history).flatten(1),
            self.response_embedding(responses).flatten(1),
            self.item_embedding(candidates).flatten(1),
            observations["history_consumption"].float(),
            observations["context"].float(),
        ]
        return torch.cat(parts, dim=1)


# -- PPO with reward-shaping KL ----------------------------------------------------------------------


class LongrecPPO(PPO):
    """SB3 PPO plus an RLHF-style KL penalty to a frozen reference policy and exact resume.

    ``reference`` (a frozen policy over the same spaces) and ``kl_config`` enable the
    penalty; ``pending_restore`` (a checkpoint payload) is applied once the learner is
    set up, so the simulator, ``_last_obs`` and the random state continue the saved run.
    """

    def __init__(self, *args: Any, reference: Any = None, kl_config: KLConfig | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reference = reference
        self.kl_config = kl_config
        self.kl_controller = make_kl_controller(kl_config) if kl_config is not None else None
        self.kl_metrics: dict[str, float] = {}
        self.pending_restore: dict[str, Any] | None = None
        self.core: BatchedSimulator | None = None
        self.checkpoint_meta: dict[str, Any] = {}
        self.ppo_config = PPOConfig(ent_coef=float(self.ent_coef))
        """the config it was built from (``build_ppo``); read for the entropy schedule"""
        self.weight_average: dict[str, torch.Tensor] | None = None
        """with ``ppo_config.ema_decay`` > 0: the moving average of the policy's weights (a state dict)"""

    def _setup_learn(self, *args: Any, **kwargs: Any):
        result = super()._setup_learn(*args, **kwargs)
        if self.pending_restore is not None:
            payload, self.pending_restore = self.pending_restore, None
            self._last_obs = restore_core_state(self.core, payload["env"]["core"])
            self._last_episode_starts = payload["env"]["last_episode_starts"]
            restore_rng_state(payload["rng"], self.policy)
        if self.ppo_config.ema_decay > 0 and self.weight_average is None:
            self.weight_average = _detached_copy(self.policy.state_dict())  # the average starts from the initial weights
        return result

    def train(self) -> None:
        self.ent_coef = entropy_coefficient(self.ppo_config, self.num_timesteps)
        super().train()
        self._update_weight_average()

    @torch.no_grad()
    def _update_weight_average(self) -> None:
        if self.weight_average is None:
            return
        decay = self.ppo_config.ema_decay
        for key, value in self.policy.state_dict().items():
            average = self.weight_average[key]
            if average.is_floating_point():
                average.mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                average.copy_(value)

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside the block the policy holds the averaged weights (``ppo.ema_decay``); the raw ones come back after.

        Without an average, the policy is left as it is."""
        if self.weight_average is None:
            yield
            return
        raw = _detached_copy(self.policy.state_dict())
        self.policy.load_state_dict(self.weight_average)
        try:
            yield
        finally:
            self.policy.load_state_dict(raw)

    def _update_learning_rate(self, optimizers) -> None:
        """The step size of ``ppo_config``'s schedule at the current step (SB3's own schedule reads the
        progress of one ``learn`` call, which a resumed or chunked run restarts); SB3's own without a schedule."""
        if self.ppo_config.lr_anneal_steps == 0:
            super()._update_learning_rate(optimizers)
            return
        rate = learning_rate_at(self.ppo_config, self.num_timesteps)
        self.logger.record("train/learning_rate", rate)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] = rate

    def collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps) -> bool:
        complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        if complete and self.reference is not None and self.kl_controller is not None:
            self._shape_rewards_with_kl(rollout_buffer)
        return complete

    @torch.no_grad()
    def _shape_rewards_with_kl(self, buffer: Any) -> None:
        n_steps, n_envs = buffer.buffer_size, buffer.n_envs
        flat_obs = {
            key: value.reshape(n_steps * n_envs, *value.shape[2:]) for key, value in buffer.observations.items()
        }
        actions = buffer.actions.reshape(n_steps * n_envs, -1)
        self.reference.set_training_mode(False)
        ref_logp = []
        for start in range(0, n_steps * n_envs, 1024):
            obs = obs_as_tensor({k: v[start : start + 1024] for k, v in flat_obs.items()}, self.device)
            act = torch.as_tensor(actions[start : start + 1024], device=self.device)
            ref_logp.append(self.reference.evaluate_actions(obs, act)[1].reshape(-1))
        logq = torch.cat(ref_logp)
        logp = torch.as_tensor(buffer.log_probs.reshape(-1), device=self.device)
        kl = kl_estimate(logp, logq, "k1").cpu().numpy().reshape(n_steps, n_envs)  # the one with the right gradient
        coef = self.kl_controller.value
        buffer.rewards -= (coef * kl).astype(buffer.rewards.dtype)
        last_values = self.policy.predict_values(obs_as_tensor(self._last_obs, self.device))
        buffer.compute_returns_and_advantage(last_values=last_values, dones=self._last_episode_starts)
        mean_kl = float(kl.mean())
        self.kl_controller.update(mean_kl, n_steps * n_envs)
        self.kl_metrics = {"kl/ref": mean_kl, "kl/coef": coef}
        self.logger.record("kl/ref", mean_kl)
        self.logger.record("kl/coef", coef)


def _detached_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


def linear_schedule(start: float, final: float, anneal_steps: int, step: int) -> float:
    """``start`` moved linearly to ``final`` over ``anneal_steps`` environment steps (constant
    afterwards); ``anneal_steps`` 0 = ``start`` throughout."""
    if anneal_steps == 0:
        return start
    fraction = min(step / anneal_steps, 1.0)
    return start + fraction * (final - start)


def entropy_coefficient(config: PPOConfig, step: int) -> float:
    """The entropy bonus at environment step ``step``: ``ent_coef``, or its linear anneal to
    ``ent_coef_final`` over ``ent_anneal_steps``."""
    return linear_schedule(config.ent_coef, config.ent_coef_final, config.ent_anneal_steps, step)


def learning_rate_at(config: PPOConfig, step: int) -> float:
    """The Adam step size at environment step ``step``: ``learning_rate``, or its linear anneal to
    ``learning_rate_final`` over ``lr_anneal_steps``."""
    return linear_schedule(config.learning_rate, config.learning_rate_final, config.lr_anneal_steps, step)


# -- callbacks ------------------------------------------------------------------------------------------


class MetricsCallback(BaseCallback):
    """Emit stable metric keys after every PPO update to SB3's logger and ``metrics_sink``.

    SB3 records an update's losses in ``train()``, which runs after the rollout; they are
    read at the start of the next rollout (and at the end of training).
    """

    def __init__(self, metrics_sink: MetricsSink | None = None, log_interval_steps: int = 0) -> None:
        super().__init__()
        self.metrics_sink = metrics_sink
        self.log_interval_steps = log_interval_steps
        self.history: list[tuple[int, dict[str, float]]] = []
        self._returns: list[float] = []
        self._lengths: list[int] = []
        self._seen_updates = 0
        self._last_emit: int | None = None

    def window(self) -> dict[str, Any]:
        """What the next row will summarise (the step of the last row, the episodes ended since): kept in
        checkpoints, so that a resumed run writes the rows of an uninterrupted one."""
        return {"last_emit": self._last_emit, "returns": list(self._returns), "lengths": list(self._lengths)}

    def restore_window(self, window: Mapping[str, Any] | None) -> None:
        if window:
            self._last_emit = window["last_emit"]
            self._returns, self._lengths = list(window["returns"]), list(window["lengths"])

    def _on_training_start(self) -> None:
        self._start_time, self._start_steps = time.perf_counter(), self.model.num_timesteps
        self._seen_updates = self.model._n_updates
        if self._last_emit is None:  # a fresh run (a resumed one restored its window)
            self._last_emit = self.model.num_timesteps

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self._returns.append(float(episode["r"]))
                self._lengths.append(int(episode["l"]))
        return True

    def _on_rollout_start(self) -> None:
        if self.model._n_updates > self._seen_updates:
            self._seen_updates = self.model._n_updates
            if self.model.num_timesteps - self._last_emit >= self.log_interval_steps:
                self.emit()

    def _on_training_end(self) -> None:
        if self.model._n_updates > self._seen_updates or self._returns:
            self._seen_updates = self.model._n_updates
            self.emit()

    def emit(self) -> dict[str, float]:
        model = self.model
        values = model.logger.name_to_value
        metrics: dict[str, float] = {
            stable: float(values[sb3]) for sb3, stable in SB3_TO_STABLE_KEYS.items() if sb3 in values
        }
        elapsed = max(time.perf_counter() - self._start_time, 1e-9)
        metrics["charts/SPS"] = (model.num_timesteps - self._start_steps) / elapsed
        if self._returns:
            metrics["charts/episodic_return"] = float(np.mean(self._returns))
            metrics["charts/episodic_length"] = float(np.mean(self._lengths))
            metrics["charts/episodes"] = float(len(self._returns))
        metrics["charts/learning_rate"] = float(model.policy.optimizer.param_groups[0]["lr"])
        metrics["charts/ent_coef"] = float(model.ent_coef)
        metrics.update(getattr(model, "kl_metrics", {}))
        self._returns, self._lengths = [], []
        self._last_emit = model.num_timesteps
        step = int(model.num_timesteps)
        self.history.append((step, metrics))
        for key, value in metrics.items():
            model.logger.record(key, value)
        if self.metrics_sink is not None:
            self.metrics_sink(metrics, step)
        return metrics


VALIDATION_SEED_OFFSET = 500_000
"""with ``ppo.keep_best``, the periodic evaluation's users are seeded ``eval_seed + VALIDATION_SEED_OFFSET``:
validation users, never those of the final evaluation (seeded ``eval_seed``)"""


class HeldOutEvaluation(BaseCallback):
    """The learning curve: the greedy policy on fixed held-out users every ``every`` steps (and at both ends).

    Every evaluation meets the same ``num_users`` users (seeded ``seed``, one life each, never
    trained on), so the curve compares policies, not the lives that happened to end in a
    window. Emits ``heldout/return`` and its 95% CI half-width ``heldout/return_ci95`` (over
    users) to ``metrics_sink`` at the step count.

    With ``keep_best``, the weights of the best evaluation so far are kept (in memory, and in
    ``best_file`` when given, so that a resumed run still knows them); :meth:`restore_best` loads them.
    """

    def __init__(self, metrics_sink: MetricsSink | None, every: int, env_id: str, env_kwargs: Mapping[str, Any],
                 num_users: int, seed: int, keep_best: bool = False, best_file: Path | None = None) -> None:
        super().__init__()
        self.metrics_sink, self.every = metrics_sink, every
        self.env_id, self.env_kwargs, self.num_users, self.seed = env_id, dict(env_kwargs), num_users, seed
        self.history: list[tuple[int, float, float]] = []
        self._last = -1
        self.keep_best, self.best_file = keep_best, best_file
        self.best: dict[str, Any] | None = None
        """``{"step", "return", "state"}`` of the best evaluation so far (with ``keep_best``)"""
        if keep_best and best_file is not None and best_file.is_file():
            self.best = torch.load(best_file, map_location="cpu", weights_only=True)

    def _remember_if_best(self, step: int, value: float) -> None:
        if self.best is not None and value <= self.best["return"]:
            return
        state = {key: tensor.detach().cpu().clone() for key, tensor in self.model.policy.state_dict().items()}
        self.best = {"step": step, "return": value, "state": state}
        if self.best_file is not None:
            self.best_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(self.best, self.best_file)

    def restore_best(self, policy: nn.Module) -> int | None:
        """Load the best evaluation's weights into ``policy``; returns its step (None: nothing evaluated)."""
        if self.best is None:
            return None
        policy.load_state_dict(self.best["state"])
        return int(self.best["step"])

    def evaluate(self) -> None:
        from agents.baselines import PolicyAgent
        from agents.evaluate import evaluate_agent

        step = int(self.model.num_timesteps)
        if step == self._last:
            return
        training = self.model.policy.training
        torch_state = torch.get_rng_state()  # PolicyAgent.reset seeds torch's global generator: training must not see it
        with self.model.averaged_weights():  # ppo.ema_decay: the average is what is evaluated and kept
            row = evaluate_agent(PolicyAgent(self.model.policy), self.env_id, num_users=self.num_users,
                                 seeds=[self.seed], env_kwargs=self.env_kwargs, progress=False).row
            if self.keep_best:
                self._remember_if_best(step, float(row["return"]))
        torch.set_rng_state(torch_state)
        self.model.policy.set_training_mode(training)
        self._last = step
        self.history.append((step, row["return"], row["return_ci95"]))
        metrics = {"heldout/return": row["return"], "heldout/return_ci95": row["return_ci95"]}
        for key, value in metrics.items():
            self.model.logger.record(key, value)
        if self.metrics_sink is not None:
            self.metrics_sink(metrics, step)

    def _on_training_start(self) -> None:
        if self._last < 0:  # a resumed run keeps the schedule of ``last_step`` (restored from its checkpoint)
            self.evaluate()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps - self._last >= self.every:
            self.evaluate()

    @property
    def last_step(self) -> int:
        """step of the last evaluation (-1: none yet); kept in checkpoints so that a resumed run keeps the schedule"""
        return self._last

    @last_step.setter
    def last_step(self, step: int) -> None:
        self._last = int(step)

    def _on_training_end(self) -> None:
        self.evaluate()


class CheckpointCallback(BaseCallback):
    """Save an atomic checkpoint every ``every`` steps, at rollout boundaries (after an update).

    At every boundary it keeps a snapshot in memory, so that an interruption in the middle of a
    rollout or an update (Ctrl-C, SIGTERM) writes the state of the last boundary
    (:meth:`save_boundary`): the resumed run then replays that rollout and ends exactly where an
    uninterrupted run ends, with the same numbers.
    """

    def __init__(self, directory: str | Path, every: int, meta: dict[str, Any], extra: Callable[[], dict]) -> None:
        super().__init__()
        self.path = checkpoint_path(directory)
        self.every = every
        self.meta = meta
        self.extra = extra
        self.last_saved: int | None = None
        self.saved_path: Path | None = None
        self.boundary: dict[str, Any] | None = None
        """the snapshot (:func:`agents.checkpoint.checkpoint_payload`) of the last rollout boundary"""

    def _on_training_start(self) -> None:
        self.last_saved = self.model.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self.boundary = checkpoint_payload(self.model, self.model.core, self.meta, self.extra())
        if self.model.num_timesteps - (self.last_saved or 0) >= self.every:
            self._write(self.boundary)

    def save(self) -> Path:
        """Write the current state (call it at a rollout boundary, e.g. when training has ended)."""
        return self._write(checkpoint_payload(self.model, self.model.core, self.meta, self.extra()))

    def save_boundary(self) -> Path:
        """Write the last boundary's snapshot (after an interruption); the current state when there is none."""
        return self.save() if self.boundary is None else self._write(self.boundary)

    def _write(self, payload: dict[str, Any]) -> Path:
        self.saved_path = atomic_torch_save(payload, self.path)
        self.last_saved = int(payload["num_timesteps"])
        return self.saved_path


# -- building and training ----------------------------------------------------------------------------


def _llm_policy_kwargs(core: BatchedSimulator, seed: int, pretrained_path: str | os.PathLike[str] | None,
                       model_config: SlatePolicyConfig | Mapping[str, Any] | None, text_encoder: str | None
                       ) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"seed": seed}
    if pretrained_path is not None:
        kwargs["pretrained_path"] = str(pretrained_path)
        return kwargs
    from llm_policy import ItemTextEncoder

    encoder = ItemTextEncoder(text_encoder, show_progress=False)
    kwargs["item_embeddings"] = encoder.encode_catalog(core.catalog)
    if not isinstance(model_config, SlatePolicyConfig):
        model_config = SlatePolicyConfig.from_dict(dict(model_config or {}))
    if model_config.item_statistics:  # from scratch: no logs were read, so nothing is known of any item
        from agents.item_statistics import with_item_statistics

        kwargs["item_embeddings"] = with_item_statistics(kwargs["item_embeddings"], None)
    kwargs["model_config"] = model_config
    return kwargs


def build_ppo(
    config: PPOConfig,
    *,
    env_id: str,
    num_envs: int,
    env_kwargs: Mapping[str, Any] | None = None,
    policy: str = "llm",
    pretrained_path: str | os.PathLike[str] | None = None,
    model_config: SlatePolicyConfig | Mapping[str, Any] | None = None,
    text_encoder: str | None = None,
    kl: KLConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    env: ScaleReward | None = None,
) -> LongrecPPO:
    """The SB3 model (not trained) of ``config`` on ``num_envs`` users of ``env_id``.

    Args:
        policy: ``"llm"`` (``LLMSlatePolicy``) or ``"mlp"`` (SB3 ``MultiInputPolicy`` over item-id embeddings).
        pretrained_path: LLM policy: a CE-pretrained ``save_pretrained`` folder to start from (None = from scratch).
        model_config: LLM policy from scratch: a ``SlatePolicyConfig`` or a dict of its fields (None = defaults).
        text_encoder: LLM policy from scratch: item text encoder folder (None = all-MiniLM-L6-v2).
        kl: KL penalty to the frozen initial policy (None, or ``coef=0``: no penalty).
        seed: run seed (python/numpy/torch, env, policy sampling).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        env: the training environment (default ``make_training_env(...)``).
    """
    if policy not in POLICY_KINDS:
        raise ValueError(f"policy={policy!r} is not known; valid: {POLICY_KINDS}")
    if policy == "mlp" and pretrained_path is not None:
        raise ValueError("pretrained_path is for policy='llm'; the MLP policy has no pretraining")
    env = env or make_training_env(env_id, num_envs, env_kwargs, policy, config.reward_scale)
    common = dict(
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        learning_rate=config.learning_rate,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        target_kl=config.target_kl,
        seed=seed,
        device=resolve_device(device),
        verbose=0,
    )
    if policy == "llm":
        from llm_policy import LLMSlatePolicy

        torch.manual_seed(seed)  # the policy's initial weights
        policy_kwargs = _llm_policy_kwargs(env.core, seed, pretrained_path, model_config, text_encoder)
        model = LongrecPPO(LLMSlatePolicy, env, policy_kwargs=policy_kwargs, **common)
    else:
        policy_kwargs = dict(
            features_extractor_class=IdEmbeddingExtractor,
            features_extractor_kwargs=dict(embedding_dim=config.mlp_embedding_dim),
            net_arch=dict(pi=list(config.mlp_net_arch), vf=list(config.mlp_net_arch)),
        )
        model = LongrecPPO("MultiInputPolicy", env, policy_kwargs=policy_kwargs, **common)
    model.core = env.core
    model.catalog = env.core.catalog.fingerprint()  # saved with an SB3 .zip: an id policy knows its items
    if policy == "llm":
        check_catalog(model.policy.model.catalog, model.catalog, pretrained_path or "the policy")
        model.policy.model.catalog = model.catalog
    model.ppo_config = config
    # Metrics flow through MetricsCallback; SB3's default logger would also leave an empty
    # /tmp/SB3-<time> folder behind on every learn().
    model.set_logger(Logger(folder=None, output_formats=[]))
    if kl is not None and kl.coef > 0:
        model.reference = copy.deepcopy(model.policy).requires_grad_(False)
        model.reference.set_training_mode(False)
        model.kl_config = kl
        model.kl_controller = make_kl_controller(kl)
    model.checkpoint_meta = {
        "kind": "ppo",
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs or {}),
        "policy": policy,
        "num_envs": num_envs,
        "n_steps": config.n_steps,
        "kl": None if kl is None else dataclasses.asdict(kl),
    }
    return model


def train_ppo(
    config: PPOConfig,
    total_timesteps: int,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    metrics_sink: MetricsSink | None = None,
    resume: bool = True,
    callbacks: Sequence[BaseCallback] = (),
    progress: bool = False,
    eval_seed: int | None = None,
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
    **setup: Any,
) -> PPOResult:
    """Train PPO with ``config`` for ``total_timesteps`` environment steps; returns the model and where it stopped.

    ``setup`` are the keyword arguments of :func:`build_ppo` (``env_id``, ``num_envs``,
    ``policy``, ``pretrained_path``, ``kl``, ``seed``, ``device``, ...). Checkpoints
    (``last.pt``) go to ``checkpoint_dir`` every ``config.checkpoint_every`` steps (None = no
    checkpoints). With ``resume`` and a ``last.pt`` there, training continues from it (policy,
    optimizer, step count, RNG and simulator state) up to ``total_timesteps``. Ctrl-C writes the
    checkpoint of the last rollout boundary (when a folder is set) and returns with ``interrupted=True``;
    resuming from it ends exactly as an uninterrupted run. With
    ``config.eval_every`` > 0, the greedy policy is evaluated on ``config.eval_users`` held-out
    users seeded ``eval_seed`` (default: ``seed + 10_000``) every ``eval_every`` steps
    (:class:`HeldOutEvaluation`); with ``config.keep_best``, they are validation users seeded
    ``eval_seed + VALIDATION_SEED_OFFSET`` and the model ends with the weights of the best evaluation
    (``PPOResult.selected_step``; kept in ``checkpoint_dir/best.pt`` across a resume).
    ``checkpoint_extra()`` adds entries to every checkpoint's ``extra`` (e.g. how many metric rows the
    run folder had at that point, so that a resumed run drops the rows logged after it).
    """
    if total_timesteps < 1:
        raise ValueError(f"total_timesteps={total_timesteps!r} must be >= 1")
    model = build_ppo(config, **setup)
    meta = model.checkpoint_meta
    resumed_from = None
    existing = find_checkpoint(checkpoint_dir) if resume else None
    if existing is not None:
        payload = load_checkpoint(existing, expected_meta=meta)
        restore_model(existing, payload, model)
        extra = payload.get("extra", {})
        if model.kl_controller is not None and extra.get("kl_coef") is not None:
            model.kl_controller.value = float(extra["kl_coef"])
        if model.reference is not None and extra.get("reference") is not None:
            model.reference.load_state_dict(extra["reference"])
        if config.ema_decay > 0 and extra.get("weight_average") is not None:
            model.weight_average = extra["weight_average"]
        model.pending_restore = payload
        resumed_from = model.num_timesteps

    def extra() -> dict[str, Any]:
        return {
            "kl_coef": None if model.kl_controller is None else model.kl_controller.value,
            "reference": None if model.reference is None else model.reference.state_dict(),
            "weight_average": model.weight_average,
            "config": config.to_dict(),
            "heldout_last_step": None if held_out is None else held_out.last_step,
            "metrics_window": metrics.window(),
            **(checkpoint_extra() if checkpoint_extra is not None else {}),
        }

    metrics = MetricsCallback(metrics_sink, config.log_interval_steps)
    if existing is not None:
        metrics.restore_window(payload["extra"].get("metrics_window"))
    checkpointer = None
    all_callbacks: list[BaseCallback] = [metrics, *callbacks]
    held_out = None
    if config.eval_every > 0:
        held_out_seed = setup.get("seed", 0) + 10_000 if eval_seed is None else eval_seed
        if config.keep_best:
            held_out_seed += VALIDATION_SEED_OFFSET
        best_file = Path(checkpoint_dir) / "best.pt" if checkpoint_dir is not None and config.keep_best else None
        held_out = HeldOutEvaluation(metrics_sink, config.eval_every, setup["env_id"], setup.get("env_kwargs") or {},
                                     config.eval_users, held_out_seed, keep_best=config.keep_best, best_file=best_file)
        if existing is not None and payload["extra"].get("heldout_last_step") is not None:
            held_out.last_step = payload["extra"]["heldout_last_step"]
        all_callbacks.append(held_out)
    if checkpoint_dir is not None:
        checkpointer = CheckpointCallback(checkpoint_dir, config.checkpoint_every, meta, extra)
        all_callbacks.append(checkpointer)  # last: its snapshot of a boundary follows the rows and evaluation logged there
    remaining = total_timesteps - model.num_timesteps
    interrupted = False
    if remaining > 0:
        try:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(all_callbacks),
                reset_num_timesteps=resumed_from is None,
                progress_bar=progress,
            )
        except KeyboardInterrupt:
            interrupted = True
    saved = existing
    if checkpointer is not None and interrupted:
        saved = checkpointer.save_boundary()  # the last rollout boundary: the resumed run replays what followed it
    elif checkpointer is not None and remaining > 0:
        saved = checkpointer.save()  # the final weights and state
    selected = held_out.restore_best(model.policy) if held_out is not None and config.keep_best and not interrupted else None
    if selected is None and model.weight_average is not None and not interrupted:
        model.policy.load_state_dict(model.weight_average)  # ppo.ema_decay: the run ends with the average
    return PPOResult(model, int(model.num_timesteps), interrupted, saved, resumed_from, selected)
