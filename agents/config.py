"""Config classes of the agents' trainers: plain dataclasses (no torch), so a config loads fast.

Each is the one definition of its knobs (name, default, range, one-line doc), used by the
trainer (``agents.ppo``, ``agents.kl``, ``agents.slateq``, which re-export them) and as a
section of the experiment config (``experiments.config``: ``ppo``, ``kl``, ``slateq``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from llm_policy.config import LLMNextItemConfig
from llm_policy.config_fields import check_fields, param

__all__ = ["PPOConfig", "KLConfig", "KLEstimator", "KL_ESTIMATORS", "SlateQConfig", "MovieLensPretrainConfig"]

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters (the ``ppo`` section of an experiment config; CleanRL-style, one documented field per knob).

    What to train on (environment, users in parallel, policy kind and initialisation, KL
    penalty, seed, device) are arguments of ``agents.ppo.build_ppo`` / ``train_ppo``.
    """

    n_steps: int = param(128, ge=1)
    """rollout length per environment (user) before each update"""
    batch_size: int = param(1024, ge=1)
    """minibatch size of each PPO gradient step"""
    n_epochs: int = param(4, ge=1)
    """optimisation epochs over each rollout"""
    learning_rate: float = param(3e-4, gt=0.0)
    """Adam learning rate (at the start, with ``lr_anneal_steps``)"""
    learning_rate_final: float = param(0.0, ge=0.0)
    """with ``lr_anneal_steps`` > 0: the learning rate reached after that many environment steps"""
    lr_anneal_steps: int = param(0, ge=0)
    """environment steps over which the learning rate moves linearly from ``learning_rate`` to
    ``learning_rate_final`` (CleanRL's ``anneal_lr``; counted from step 0 of the run, so a resumed run
    continues the schedule); 0 = a constant ``learning_rate``"""
    gamma: float = param(0.99, ge=0.0, le=1.0)
    """discount factor"""
    gae_lambda: float = param(0.95, ge=0.0, le=1.0)
    """GAE lambda"""
    clip_range: float = param(0.2, gt=0.0)
    """PPO clipping epsilon"""
    ent_coef: float = param(0.0, ge=0.0)
    """entropy bonus coefficient (at the start, with ``ent_anneal_steps``)"""
    ent_coef_final: float = param(0.0, ge=0.0)
    """with ``ent_anneal_steps`` > 0: the entropy bonus reached after that many environment steps"""
    ent_anneal_steps: int = param(0, ge=0)
    """environment steps over which the entropy bonus moves linearly from ``ent_coef`` to
    ``ent_coef_final`` (then stays there; counted from step 0 of the run, so a resumed run continues
    the schedule); 0 = a constant ``ent_coef``"""
    vf_coef: float = param(0.5, ge=0.0)
    """value loss coefficient"""
    max_grad_norm: float = param(0.5, gt=0.0)
    """gradient clipping norm"""
    target_kl: float | None = param(None, gt=0.0)
    """SB3's early stop of an update when approx_kl exceeds 1.5x this (None = off; not the KL penalty)"""
    reward_scale: float = param(0.1, gt=0.0)
    """rewards are multiplied by this for learning (episode returns are logged unscaled)"""
    mlp_embedding_dim: int = param(16, ge=1)
    """MLP policy (``ppo_mlp``): size of the item-id embeddings"""
    mlp_net_arch: tuple[int, ...] = (256, 256)
    """MLP policy (``ppo_mlp``): hidden layers of the actor and critic"""
    checkpoint_every: int = param(50_000, ge=1)
    """environment steps between periodic checkpoints (taken at the next rollout boundary)"""
    log_interval_steps: int = param(0, ge=0)
    """environment steps between metrics emissions (0 = after every update)"""
    eval_every: int = param(0, ge=0)
    """environment steps between evaluations of the greedy policy on fixed held-out users, logged as
    ``heldout/return`` and ``heldout/return_ci95`` (the learning curve); 0 = none"""
    eval_users: int = param(200, ge=1)
    """held-out users of each periodic evaluation (one life each, the same users every time)"""
    ema_decay: float = param(0.0, ge=0.0, lt=1.0)
    """exponential moving average of the policy's weights (Polyak averaging): after every update
    ``average = ema_decay * average + (1 - ema_decay) * weights``, starting from the initial weights. With
    ``ema_decay`` > 0, the periodic evaluation, ``keep_best`` and the weights the run ends with are the
    average; training goes on from the raw weights. 0 = off (the last weights)"""
    keep_best: bool = False
    """with ``eval_every`` > 0: the run ends with the weights whose periodic evaluation scored the highest
    return, not the last ones (model selection, as SB3's ``EvalCallback`` keeps its best model). The
    periodic evaluation then meets *validation* users, seeded apart from the final evaluation's
    (``agents.ppo.VALIDATION_SEED_OFFSET``), so the choice never sees the users it is scored on"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mlp_net_arch", tuple(self.mlp_net_arch))
        check_fields(self)
        if self.keep_best and self.eval_every == 0:
            raise ValueError("keep_best=True needs eval_every > 0 (the periodic evaluation picks the weights kept)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class KLConfig:
    """KL penalty to the reference policy as a shaped reward (the ``kl`` section of an experiment config; agent
    ``ce_ppo_kl``)."""

    coef: float = param(0.05, ge=0.0)
    """initial (or fixed) penalty coefficient beta; 0 disables the penalty. Each step's reward becomes
    ``r - beta * (log p(a) - log q(a))`` (k1 on the sampled slate, as in RLHF): its policy gradient is
    ``grad E[r] - beta * grad KL(p || q)``; k2/k3 as a reward would not be (``agents.kl``)"""
    target: float | None = param(None, gt=0.0)
    """target KL per step for the adaptive controller; None keeps beta fixed"""
    horizon: int = param(10_000, ge=1)
    """adaptive controller horizon in environment steps (Ziegler et al. use 10k)"""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class SlateQConfig:
    """SlateQ training (Ie et al. 2019) on the batched simulator (the ``slateq`` section of an experiment config)."""

    gamma: float = param(0.99, ge=0.0, lt=1.0)
    """discount of the long-term item value Q(s, i)"""
    td_target: Literal["sarsa", "q_learning"] = "sarsa"
    """bootstrap on the slate actually shown next (``sarsa``) or on the greedy slate (``q_learning``)"""
    slate_optimiser: Literal["greedy", "topk"] = "greedy"
    """``greedy`` (add the item raising the slate value most) or ``topk`` (rank by v(s, i) Q(s, i))"""
    learning_rate: float = param(1e-3, gt=0.0)
    """Adam step size"""
    batch_size: int = param(1024, ge=1)
    """transitions per gradient step"""
    gradient_steps: int = param(2, ge=1)
    """gradient steps per batched environment step (num_envs transitions)"""
    buffer_size: int = param(100_000, ge=1)
    """replay buffer capacity in transitions"""
    learning_starts: int = param(5_000, ge=0)
    """transitions collected before the first gradient step"""
    target_update_tau: float = param(0.01, gt=0.0, le=1.0)
    """Polyak rate of the target network"""
    epsilon_start: float = param(0.5, ge=0.0, le=1.0)
    """initial probability of a uniformly random slate"""
    epsilon_end: float = param(0.02, ge=0.0, le=1.0)
    """final exploration probability"""
    epsilon_fraction: float = param(0.5, ge=0.0, le=1.0)
    """fraction of the training steps over which epsilon decays linearly"""
    reward_scale: float = param(0.1, gt=0.0)
    """rewards are multiplied by this before TD (keeps Q near unit scale)"""
    embedding_dim: int = param(32, ge=1)
    """item-id and response embedding size"""
    hidden_dim: int = param(128, ge=1)
    """width of the user, item and Q towers"""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class MovieLensPretrainConfig:
    """Next-item pretraining of the LLM policy on a MovieLens folder: protocol, item features, training.

    The ``movielens`` section of an experiment config (``longrec pretrain -c movielens``); the
    folder, the item-text encoder, seed and device are arguments of
    ``agents.movielens_pretrain.pretrain_movielens``.
    """

    min_interactions: int = param(5, ge=3)
    """users with fewer interactions are dropped (protocol step 3)"""
    train: LLMNextItemConfig = field(default_factory=LLMNextItemConfig)
    """model and training settings (``llm_policy.LLMNextItemConfig``)"""
    popularity_feature: bool = True
    """append the visible popularity ``log(1 + training count) / log(1 + max count)`` to each item's
    text embedding (the item features the policy scores), as the simulator's catalog exposes it"""
    release_year_feature: bool = True
    """append the release year (``envs.movielens.release_year_features``: year bin one-hot + scaled
    year) to each item's features; the year is in every item text, the features make it easy to use"""
    text_match: bool = True
    """turn on the policy's text-match logit term over the whole text embedding (``model.text_match_dims``
    = its width, unless the model config already sets a width): a learned weight times the cosine between
    the last clicked movie's text and each candidate's, the "same series / more like this" signal that
    also reaches movies with no training interactions"""

    def __post_init__(self) -> None:
        check_fields(self)
