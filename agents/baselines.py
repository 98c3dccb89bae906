"""Baseline slate recommenders behind one batched interface.

Every agent maps a batch of observations (the simulator's Dict observation with
a leading axis of B users) to a ``(B, K)`` array of distinct candidate indices,
position 0 at the top::

    agent.reset(seed)            # re-seed any randomness (deterministic evaluation)
    slates = agent.act(obs)      # (B, K) int64

Privileged agents (``agent.privileged = True``) read the ``BatchedSimulator`` they
were built with (true choice model, hidden user state), so they must act on the
core's full batch; the others accept any sub-batch of users.

* ``random``: K distinct uniform candidates (seeded generator).
* ``popularity``: the K candidates of highest visible catalog popularity.
* ``myopic``: maximises the immediate click probability under the true MNL with
  position bias, i.e. the best-utility candidates in the best positions -- the
  clickbait trap of engagement-optimised feeds.
* ``noisy_quality``: candidates ranked by hidden ``quality + interest - appeal``
  plus Gumbel noise (a decent but imperfect recommender); ``quality_aware``: the
  same ranking without noise. Behaviour (logging) policies only: see ``BEHAVIOURS``.
* ``oracle``: a hidden-state heuristic (hidden quality, appeal, interest,
  fatigue, satisfaction and time left) that values each candidate by its
  expected watch time plus the satisfaction it builds, and picks the slate by
  SlateQ's greedy optimisation under the true choice model (``agents.slateq``);
  the upper reference.
* ``pctr_greedy``: a (CE-pretrained) ``LLMSlatePolicy`` used greedily, no RL
  (``PolicyAgent`` over any SB3 policy).
* ``completion_greedy``: the candidates of highest logged completion rate (the item statistics of a
  CE-pretrained policy, ``agents.item_statistics``); non-privileged, no model.
* ``slateq``: ``agents.slateq.SlateQAgent`` (Ie et al. 2019).
* ``ppo_mlp``: SB3 PPO with an MLP over item-id embeddings (``agents.ppo``).

``make_baseline(name, env, **kwargs)`` builds any of them by name (``BASELINES``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from agents.slateq import optimise_slate
from envs.catalog import ID_CATALOG_HINT, check_catalog
from envs.core import BatchedSimulator
from envs.interest_evolution import InterestEvolutionUserModel
from envs.user import LongTermUserModel

BEHAVIOURS = ("logger", "random", "myopic", "noisy_quality", "quality_aware")
"""the behaviour (logging) policies of ``agents.logs``; ``noisy_quality`` and ``quality_aware`` are
behaviour policies only, so they are not in ``agents.registry`` (not offered as ``agent=``)"""

SeedLike = int | Sequence[int] | None
"""what ``numpy.random.default_rng`` takes (the logs seed their behaviour with ``[seed, 1]``)"""


@runtime_checkable
class Agent(Protocol):
    """What evaluation needs from a recommender (batched)."""

    privileged: bool
    """True if ``act`` reads the simulator (then it must see the core's full batch)"""

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray: ...


def as_core(env: Any) -> BatchedSimulator:
    """The ``BatchedSimulator`` of a core or any longrec view."""
    if isinstance(env, BatchedSimulator):
        return env
    from envs import get_core

    return get_core(env)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, k) indices of the k largest scores per row, largest first (ties: lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _num_users(observation: dict[str, np.ndarray]) -> int:
    return len(observation["candidate_item_ids"])


class SeededAgent:
    """An agent whose randomness is one numpy generator, ``self.rng``, re-created by ``reset(seed)``."""

    def reset(self, seed: SeedLike = None) -> None:
        self.rng = np.random.default_rng(seed)


class RandomAgent(SeededAgent):
    """K distinct uniformly random candidates per user, from a seeded generator."""

    privileged = False

    def __init__(self, num_candidates: int, slate_size: int, seed: SeedLike = 0) -> None:
        if not 1 <= slate_size <= num_candidates:
            raise ValueError(f"slate_size={slate_size} must be in [1, num_candidates={num_candidates}]")
        self.num_candidates, self.slate_size = num_candidates, slate_size
        self.reset(seed)

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        keys = self.rng.random((_num_users(observation), self.num_candidates))
        return top_k_indices(keys, self.slate_size)


class PopularityAgent:
    """The K candidates of highest visible catalog popularity, most popular on top."""

    privileged = False

    def __init__(self, popularity: np.ndarray, slate_size: int) -> None:
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.slate_size = slate_size

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return top_k_indices(self.popularity[observation["candidate_item_ids"]], self.slate_size)


class MyopicAgent:
    """Maximise the immediate click probability under the true MNL choice model.

    ``P(click) = sum_k exp(u_k + b_k) / (exp(u_0) + sum_k exp(u_k + b_k))`` rises with
    each term, and by the rearrangement inequality the sum is largest when the K
    highest utilities sit in the positions of highest bias: so the slate is the
    top-K candidates by true utility, best on top.
    """

    privileged = True

    def __init__(self, core: BatchedSimulator) -> None:
        self.core = core

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        ranked = top_k_indices(self.core.candidate_utilities(), self.core.slate_size)
        slates = np.empty_like(ranked)
        slates[:, np.argsort(-self.core.position_bias, kind="stable")] = ranked
        return slates


class QualityAgent(SeededAgent):
    """Rank candidates by hidden ``quality + interest - appeal`` plus Gumbel noise of scale ``temperature``.

    A decent but imperfect recommender (``noisy_quality``, temperature 1) that knows the
    hidden quality and the user's interest and avoids clickbait; at temperature 0 the
    ranking is exact (``quality_aware``) and no noise is drawn.
    """

    privileged = True

    def __init__(self, core: BatchedSimulator, temperature: float = 1.0, seed: SeedLike = 0) -> None:
        if temperature < 0:
            raise ValueError(f"temperature={temperature!r} must be >= 0")
        self.core = core
        self.temperature = temperature
        self.reset(seed)

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        core = self.core
        ids, catalog = core.candidate_item_ids, core.catalog
        interest = np.take_along_axis(core.hidden_state()["interest"], catalog.topic[ids], axis=1)
        score = catalog.quality[ids] + interest - catalog.appeal[ids]
        if self.temperature > 0:
            gumbel = -np.log(-np.log(self.rng.random(score.shape) + 1e-12) + 1e-12)
            score = score + self.temperature * gumbel
        return top_k_indices(score, core.slate_size)


@dataclass(frozen=True)
class OracleConfig:
    """Weights of the hidden-state oracle's item value (long-term user model)."""

    satisfaction_weight: float = 400.0
    """minutes of future watch time credited per unit of satisfaction gained this step"""
    minutes_weight: float = 1.0
    """weight of the expected watch time of a click (minutes)"""
    leave_weight: float = 1.0
    """weight of the session time lost when an ignored slate ends the session early"""
    refund_weight: float = 10.0
    """interest evolution: future watch minutes per refunded minute (refunds compound: a longer
    session shows more high-quality videos, which refund again; 10 was best of 1/3/10/30)"""


class OracleAgent:
    """Hidden-state oracle: expected minutes + value of satisfaction, optimised under the true MNL.

    For the long-term user model (``envs.user``), a click on candidate i is worth
    ``minutes_weight * E[minutes_i] + satisfaction_weight * d satisfaction_i`` where the
    expected watch fraction, the experience (quality and interest minus the clickbait
    penalty) and the satisfaction step use the user model's own parameters and the
    hidden quality, appeal, interest, fatigue and satisfaction. No click is worth the
    satisfaction step toward ``no_click_experience`` minus the chance of leaving times the
    session time left. For RecSim's interest evolution, a click is worth the watch time
    plus ``refund_weight`` times the session time refunded by quality (refunded minutes
    become watch time, which refunds again); an ignored slate costs the step penalty. The
    slate is chosen by SlateQ's greedy optimisation under the true choice model.
    """

    privileged = True

    def __init__(self, core: BatchedSimulator, config: OracleConfig | None = None) -> None:
        if not isinstance(core.user_model, LongTermUserModel | InterestEvolutionUserModel):
            raise ValueError(
                f"the oracle knows LongTermUserModel and InterestEvolutionUserModel, not "
                f"{type(core.user_model).__name__}"
            )
        self.core = core
        self.config = config or OracleConfig()

    def reset(self, seed: int | None = None) -> None:
        pass

    def item_values(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, C) value of a click on each candidate and (B,) value of no click."""
        if isinstance(self.core.user_model, InterestEvolutionUserModel):
            return self._interest_evolution_values()
        return self._long_term_values()

    def _long_term_values(self) -> tuple[np.ndarray, np.ndarray]:
        core, cfg = self.core, self.config
        model: LongTermUserModel = core.user_model  # type: ignore[assignment]
        u, catalog = model.user, core.catalog
        hidden = core.hidden_state()
        ids = core.candidate_item_ids
        topic = catalog.topic[ids]
        interest = np.take_along_axis(hidden["interest"], topic, axis=1)
        fatigue = np.take_along_axis(hidden["fatigue"], topic, axis=1)
        quality, appeal = catalog.quality[ids].astype(np.float64), catalog.appeal[ids].astype(np.float64)
        minutes = model.consumption_fraction(quality, appeal, interest, fatigue) * catalog.length[ids]
        experience = model.click_experience(quality, appeal, interest)
        satisfaction = hidden["satisfaction"][:, None]
        click_value = cfg.minutes_weight * minutes + cfg.satisfaction_weight * u.satisfaction_rate * (
            experience - satisfaction
        )
        no_click_value = (
            cfg.satisfaction_weight * u.satisfaction_rate * (u.no_click_experience - hidden["satisfaction"])
            - cfg.leave_weight * u.leave_after_no_click * np.maximum(hidden["time_left"], 0.0)
        )
        return click_value, no_click_value

    def _interest_evolution_values(self) -> tuple[np.ndarray, np.ndarray]:
        core = self.core
        model: InterestEvolutionUserModel = core.user_model  # type: ignore[assignment]
        config = model.config
        ids = core.candidate_item_ids
        time_left = np.maximum(core.hidden_state()["time_left"], 0.0)[:, None]
        watch = np.minimum(time_left, core.catalog.length[ids])
        refund = config.budget_update_alpha * watch * config.document_quality_factor * core.catalog.quality[ids]
        click_value = watch + self.config.refund_weight * refund
        no_click_value = np.full(core.num_users, -config.step_penalty)
        return click_value, no_click_value

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        click_value, no_click_value = self.item_values()
        core = self.core
        return optimise_slate(
            "greedy",
            click_value,
            core.candidate_utilities(),
            core.position_bias,
            core.no_click_utility(),
            no_click_value,
        )


class PolicyAgent:
    """Any SB3 policy (``LLMSlatePolicy``, an MLP ``ActorCriticPolicy``) as a batched agent.

    ``deterministic=True`` is the greedy slate (for a CE-pretrained ``LLMSlatePolicy``:
    the pCTR-greedy baseline). Policies whose actions may repeat a candidate (SB3's
    ``MultiCategorical`` over ``MultiDiscrete``) are de-duplicated by
    ``distinct_slates``: a repeated entry becomes the best unused candidate under the
    policy's own per-position logits. Observations go through in chunks of
    ``batch_size`` users.
    """

    privileged = False

    def __init__(
        self, policy: Any, deterministic: bool = True, batch_size: int = 1024, seed: int = 0
    ) -> None:
        self.policy = policy
        self.deterministic = deterministic
        self.batch_size = batch_size
        self.generator_seed = seed

    def reset(self, seed: int | None = None) -> None:
        self.generator_seed = 0 if seed is None else seed
        torch.manual_seed(self.generator_seed)

    @torch.no_grad()
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        num_users = _num_users(observation)
        slates = []
        for start in range(0, num_users, self.batch_size):
            chunk = {key: value[start : start + self.batch_size] for key, value in observation.items()}
            slates.append(self._act_chunk(chunk))
        return np.concatenate(slates)

    def _act_chunk(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        policy = self.policy
        policy.set_training_mode(False)
        obs_tensor, _ = policy.obs_to_tensor(observation)
        distribution = policy.get_distribution(obs_tensor)
        actions = distribution.get_actions(deterministic=self.deterministic).cpu().numpy()
        actions = actions.reshape(len(observation["candidate_item_ids"]), -1).astype(np.int64)
        if _has_duplicates(actions):
            logits = _per_position_logits(distribution)
            if logits is None:
                raise ValueError(
                    f"{type(policy).__name__} produced a slate with a repeated candidate and its "
                    "distribution has no per-position logits to repair it"
                )
            actions = distinct_slates(actions, logits)
        return actions


def _has_duplicates(slates: np.ndarray) -> bool:
    ordered = np.sort(slates, axis=1)
    return bool((ordered[:, 1:] == ordered[:, :-1]).any())


def _per_position_logits(distribution: Any) -> np.ndarray | None:
    """(B, K, C) logits of SB3's ``MultiCategoricalDistribution`` (None for other distributions)."""
    parts = getattr(distribution, "distribution", None)
    if not isinstance(parts, list | tuple) or not parts:
        return None
    return torch.stack([part.logits for part in parts], dim=1).cpu().numpy()


def distinct_slates(slates: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Replace repeated candidates: keep each position's first use, fill repeats best-logit-first.

    ``slates`` (B, K) may repeat entries; ``logits`` (B, K, C) are the per-position
    scores. Position by position, an entry already used higher up is replaced by the
    highest-logit candidate of that position not yet in the slate.
    """
    slates = slates.copy()
    num_users, slate_size = slates.shape
    rows = np.arange(num_users)
    used = np.zeros((num_users, logits.shape[2]), dtype=bool)
    for position in range(slate_size):
        choice = slates[:, position]
        repeated = used[rows, choice]
        if repeated.any():
            masked = np.where(used[repeated], -np.inf, logits[repeated, position])
            choice = choice.copy()
            choice[repeated] = masked.argmax(axis=1)
            slates[:, position] = choice
        used[rows, choice] = True
    return slates


def _given_or_loaded(name: str, what: str, given: Any, path: Any, load: Callable[[Any], Any]) -> Any:
    """``given``, else ``load(path)``; a ValueError naming both arguments when neither is there."""
    if given is not None:
        return given
    if path is None:
        raise ValueError(f"make_baseline({name!r}, ...) needs {what}= or path=")
    return load(path)


def _load_llm_policy(path: Any) -> Any:
    from llm_policy import LLMSlatePolicy

    return LLMSlatePolicy.from_pretrained(path)


def _load_sb3_ppo(path: Any) -> Any:
    from stable_baselines3 import PPO

    return PPO.load(path, device="cpu")


def _llm_policy_of(name: str, core: BatchedSimulator, policy: Any, path: Any) -> Any:
    """The given or loaded LLM policy of agent ``name``, checked to serve ``core``'s catalog."""
    policy = _given_or_loaded(name, "policy", policy, path, _load_llm_policy)
    check_catalog(policy.model.catalog, core.catalog.fingerprint(), f"the LLM policy {path or ''}".rstrip())
    return policy


def _pctr_greedy(core: BatchedSimulator, seed: int, policy: Any = None, path: Any = None, **kwargs: Any) -> Agent:
    policy = _llm_policy_of("pctr_greedy", core, policy, path)
    return PolicyAgent(policy, deterministic=True, seed=seed, **kwargs)


def _completion_greedy(core: BatchedSimulator, seed: int, policy: Any = None, path: Any = None) -> Agent:
    """The completion column of an LLM policy's logged item statistics (``agents.item_statistics``), ranked."""
    from agents.item_statistics import CompletionGreedyAgent

    policy = _llm_policy_of("completion_greedy", core, policy, path)
    completion = policy.model.item_statistics()[:, 0].detach().cpu().numpy()
    return CompletionGreedyAgent(completion, core.slate_size)


def _slateq(core: BatchedSimulator, seed: int, agent: Any = None, path: Any = None, map_ids: bool = False) -> Agent:
    from agents.slateq import SlateQAgent

    agent = _given_or_loaded("slateq", "agent", agent, path, SlateQAgent.load)
    agent.attach(core, map_ids=map_ids)
    return agent


def _ppo_mlp(core: BatchedSimulator, seed: int, model: Any = None, path: Any = None, map_ids: bool = False,
             **kwargs: Any) -> Agent:
    """Any SB3 PPO model (the MLP id policy, or an LLM policy trained in memory), greedy. Another catalog than
    the one it learned is refused unless ``map_ids`` (id i keeps its learned vector: a no-transfer baseline)."""
    model = _given_or_loaded("ppo_mlp", "model", model, path, _load_sb3_ppo)
    if not map_ids:
        check_catalog(getattr(model, "catalog", None), core.catalog.fingerprint(), f"the PPO policy {path or ''}".rstrip(),
                      ID_CATALOG_HINT)
    return PolicyAgent(model.policy, deterministic=True, seed=seed, **kwargs)


def _logger(core: BatchedSimulator, seed: int, **kwargs: Any) -> Agent:
    from agents.logger import ProductionLogger

    return ProductionLogger(core, **kwargs)


WATCH_GREEDY = OracleConfig(satisfaction_weight=0.0, leave_weight=0.0, refund_weight=0.0)
"""the oracle's item value reduced to this step's expected reward: one-step expected-reward greedy"""


_BUILDERS: dict[str, Callable[..., Agent]] = {
    "random": lambda core, seed, **kw: RandomAgent(core.num_candidates, core.slate_size, seed=seed, **kw),
    "popularity": lambda core, seed, **kw: PopularityAgent(core.catalog.popularity, core.slate_size, **kw),
    "myopic": lambda core, seed, **kw: MyopicAgent(core, **kw),
    "noisy_quality": lambda core, seed, **kw: QualityAgent(core, seed=seed, **kw),
    "quality_aware": lambda core, seed, **kw: QualityAgent(core, temperature=0.0, seed=seed, **kw),
    "oracle": lambda core, seed, **kw: OracleAgent(core, **kw),
    "watch_greedy": lambda core, seed, **kw: OracleAgent(core, WATCH_GREEDY, **kw),
    "logger": _logger,
    "pctr_greedy": _pctr_greedy,
    "completion_greedy": _completion_greedy,
    "slateq": _slateq,
    "ppo_mlp": _ppo_mlp,
}

BASELINES: tuple[str, ...] = tuple(_BUILDERS)
"""every name ``make_baseline`` builds: agents of ``agents.registry`` and the ``BEHAVIOURS``"""


def make_baseline(name: str, env: Any, seed: int = 0, **kwargs: Any) -> Agent:
    """Build baseline ``name`` (one of ``BASELINES``) for ``env`` (a ``BatchedSimulator`` or any longrec view).

    * ``random``, ``popularity``, ``myopic``, ``quality_aware``: no arguments.
    * ``noisy_quality``: optional ``temperature=`` (default 1).
    * ``oracle``: optional ``config=OracleConfig(...)``; ``watch_greedy``: the oracle valuing only this
      step's expected reward (privileged, the true model's one-step greedy).
    * ``logger``: the production logger (``agents.logger.ProductionLogger``, a click model on visible
      features); optional ``config=LoggerConfig(...)``.
    * ``pctr_greedy``: ``policy=`` an SB3 policy (e.g. a CE-pretrained ``LLMSlatePolicy``)
      or ``path=`` a folder saved by ``LLMSlatePolicy.save_pretrained``.
    * ``completion_greedy``: ``policy=`` or ``path=`` as ``pctr_greedy``, a policy with logged item statistics
      (``policy.item_statistics``): its candidates ranked by their logged completion rate.
    * ``slateq``: ``agent=`` a trained ``SlateQAgent`` or ``path=`` a file saved by
      ``SlateQAgent.save`` (it is re-attached to this env's core).
    * ``ppo_mlp``: ``model=`` a trained SB3 PPO, or ``path=`` a saved one (``PPO.load``).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    return _BUILDERS[name](as_core(env), seed, **kwargs)
