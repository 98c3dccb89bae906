"""SlateQ: slate value decomposition under a multinomial-logit choice model.

Follows Ie et al. 2019, "SlateQ: A Tractable Decomposition for Reinforcement
Learning with Recommendation Sets" (IJCAI). With a user choice model
``P(i | s, A)`` (here the simulator's own multinomial logit with position bias
and a no-click option), the long-term value of a slate decomposes into
item-wise values::

    Q(s, A) = sum_{i in A} P(i | s, A) Q(s, i) + P(no click | s, A) Q(s, none)

so only ``Q(s, i)`` (and the no-click value) is learned, by TD on the item the
user actually chose (SARSA or Q-learning, the paper's two variants); the slate
is then picked by the paper's greedy optimisation (add the item that raises the
slate value most, best position first) or its top-K rule (rank by
``v(s, i) Q(s, i)``).

The choice-model helpers at the top are shared with the hidden-state oracle
(``agents.baselines.OracleAgent``), which uses the same optimisation with a
hand-made item value.

Privilege: SlateQ here knows the simulator's choice model (the true MNL
utilities and position bias, read from the core), as the paper assumes a known
or separately learned choice model; the long-term item values are learned from
visible observations only.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.config import SlateQConfig
from envs.catalog import ID_CATALOG_HINT, check_catalog
from envs.core import BatchedSimulator

SLATE_OPTIMISERS = ("greedy", "topk")


# -- the choice model and slate optimisation ---------------------------------------------------------


def mnl_weights(utilities: np.ndarray) -> np.ndarray:
    """``exp(utility)``; utilities of -inf (never chosen) give weight 0."""
    return np.exp(np.asarray(utilities, dtype=np.float64))


def slate_value(
    item_values: np.ndarray,
    utilities: np.ndarray,
    position_bias: np.ndarray,
    no_click_utility: np.ndarray,
    no_click_value: np.ndarray,
    slates: np.ndarray,
) -> np.ndarray:
    """(B,) expected value ``sum_i P(i | s, A) Q(s, i) + P(none) Q(s, none)`` of ``slates`` (B, K).

    ``item_values``/``utilities`` are (B, C) over the candidates, ``position_bias`` (K,)
    is added to the utility of the item at each slate position (MNL with position bias).
    """
    rows = np.arange(len(slates))[:, None]
    weight = mnl_weights(utilities[rows, slates] + position_bias[None, :])
    no_click = mnl_weights(no_click_utility)
    numerator = no_click * no_click_value + (weight * item_values[rows, slates]).sum(axis=1)
    return numerator / (no_click + weight.sum(axis=1))


def greedy_mnl_slate(
    item_values: np.ndarray,
    utilities: np.ndarray,
    position_bias: np.ndarray,
    no_click_utility: np.ndarray,
    no_click_value: np.ndarray,
) -> np.ndarray:
    """SlateQ's greedy optimisation: fill positions best-first with the item raising the slate value most.

    Every position is filled (a slate always has K items), even when an item
    lowers the value; positions are filled in order of decreasing position bias.
    Returns (B, K) candidate indices, position 0 first.
    """
    item_values = np.asarray(item_values, dtype=np.float64)
    num_users, num_candidates = item_values.shape
    slate_size = len(position_bias)
    if slate_size > num_candidates:
        raise ValueError(f"slate size {slate_size} exceeds the {num_candidates} candidates")
    base_weight = mnl_weights(utilities)
    no_click = mnl_weights(no_click_utility)
    numerator = no_click * np.asarray(no_click_value, dtype=np.float64)
    denominator = no_click.copy()
    available = np.ones((num_users, num_candidates), dtype=bool)
    slates = np.zeros((num_users, slate_size), dtype=np.int64)
    rows = np.arange(num_users)
    for position in np.argsort(-np.asarray(position_bias), kind="stable"):
        weight = base_weight * math.exp(float(position_bias[position]))
        value = (numerator[:, None] + weight * item_values) / (denominator[:, None] + weight)
        # ties (e.g. zero-weight items) break toward the higher item value
        value = np.where(available, value + 1e-9 * np.tanh(item_values), -np.inf)
        pick = value.argmax(axis=1)
        slates[:, position] = pick
        available[rows, pick] = False
        numerator = numerator + weight[rows, pick] * item_values[rows, pick]
        denominator = denominator + weight[rows, pick]
    return slates


def topk_mnl_slate(
    item_values: np.ndarray, utilities: np.ndarray, position_bias: np.ndarray
) -> np.ndarray:
    """SlateQ's top-K rule: rank candidates by ``v(s, i) Q(s, i)`` (v = exp(utility)); best in position 0."""
    score = mnl_weights(utilities) * np.asarray(item_values, dtype=np.float64)
    order = np.argsort(-score, axis=1, kind="stable")[:, : len(position_bias)]
    # place the best-scored item in the position with the largest bias
    slates = np.empty_like(order)
    slates[:, np.argsort(-np.asarray(position_bias), kind="stable")] = order
    return slates


def optimise_slate(optimiser: str, item_values: np.ndarray, *choice: np.ndarray) -> np.ndarray:
    """``greedy_mnl_slate`` or ``topk_mnl_slate`` by name; ``choice`` = (utilities, position_bias,
    no_click_utility, no_click_value), of which top-k reads the first two."""
    if optimiser == "greedy":
        return greedy_mnl_slate(item_values, *choice)
    if optimiser == "topk":
        return topk_mnl_slate(item_values, *choice[:2])
    raise ValueError(f"slate optimiser {optimiser!r} is not known; valid: {SLATE_OPTIMISERS}")


# -- the learned item-wise long-term value ------------------------------------------------------------


class ItemQNetwork(nn.Module):
    """Q(s, i) from (observation features, item features) and the no-click value Q(s, none).

    The user tower mean-pools the history (item-id embedding + response embedding +
    consumption) and adds the visible context; the item tower embeds the item id and
    its visible popularity; Q(s, i) is an MLP over [user, item, user * item].
    """

    def __init__(self, num_items: int, context_dim: int, popularity: np.ndarray, embedding_dim: int, hidden_dim: int):
        super().__init__()
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=num_items)
        self.response_embedding = nn.Embedding(3, embedding_dim)
        self.consumption_vector = nn.Parameter(torch.zeros(embedding_dim))
        self.register_buffer("popularity", torch.as_tensor(np.append(popularity, 0.0), dtype=torch.float32))
        self.user_tower = nn.Sequential(
            nn.Linear(embedding_dim + context_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()
        )
        self.item_tower = nn.Sequential(nn.Linear(embedding_dim + 1, hidden_dim), nn.ReLU())
        self.q_head = nn.Sequential(nn.Linear(3 * hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))
        self.no_click_head = nn.Linear(hidden_dim, 1)

    def user(self, history_ids, history_responses, history_consumption, context) -> torch.Tensor:
        tokens = (
            self.item_embedding(history_ids)
            + self.response_embedding(history_responses)
            + history_consumption.unsqueeze(-1) * self.consumption_vector
        )
        mask = (history_responses > 0).unsqueeze(-1).float()
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.user_tower(torch.cat([pooled, context], dim=-1))

    def item_values(self, user: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """(B, M) Q(s, i) of ``item_ids`` (B, M) for the users' features ``user`` (B, hidden)."""
        item = self.item_tower(torch.cat([self.item_embedding(item_ids), self.popularity[item_ids].unsqueeze(-1)], -1))
        user = user.unsqueeze(1).expand(-1, item_ids.shape[1], -1)
        return self.q_head(torch.cat([user, item, user * item], dim=-1)).squeeze(-1)

    def no_click_value(self, user: torch.Tensor) -> torch.Tensor:
        return self.no_click_head(user).squeeze(-1)


def _user_tensors(observation: dict[str, np.ndarray], device: torch.device) -> tuple[torch.Tensor, ...]:
    return (
        torch.as_tensor(observation["history_item_ids"], dtype=torch.long, device=device),
        torch.as_tensor(observation["history_responses"], dtype=torch.long, device=device),
        torch.as_tensor(observation["history_consumption"], dtype=torch.float32, device=device),
        torch.as_tensor(observation["context"], dtype=torch.float32, device=device),
    )


class SlateQAgent:
    """A trained SlateQ recommender (batched, privileged on the choice model only)."""

    privileged = True

    def __init__(self, network: ItemQNetwork, config: SlateQConfig, core: BatchedSimulator | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.network = network
        self.config = config
        self.device = torch.device(device)
        self.core = core
        self.chunk = 4096
        self.catalog = core.catalog.fingerprint() if core is not None else None
        """fingerprint of the catalog it learned (its Q-network has one vector per item id)"""

    def attach(self, core: BatchedSimulator, map_ids: bool = False) -> None:
        """Use ``core``'s choice model (utilities, position bias) from now on. Another catalog is refused
        (:class:`envs.catalog.CatalogMismatch`) unless ``map_ids``: then item i of the new catalog gets the
        learned vector of the old item i (a no-transfer baseline; same catalog size only)."""
        if core.catalog.num_items != self.network.num_items:
            raise ValueError(
                f"SlateQ network was trained on {self.network.num_items} items; this simulator has "
                f"{core.catalog.num_items}"
            )
        if not map_ids:
            check_catalog(self.catalog, core.catalog.fingerprint(), "the SlateQ agent", ID_CATALOG_HINT)
        self.core = core

    def reset(self, seed: int | None = None) -> None:
        pass

    @torch.no_grad()
    def values(self, observation: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(B, C) Q(s, i) of every candidate and (B,) Q(s, none), in reward units."""
        self.network.eval()
        item_parts, none_parts = [], []
        num_users = len(observation["candidate_item_ids"])
        for start in range(0, num_users, self.chunk):
            part = {key: value[start : start + self.chunk] for key, value in observation.items()}
            user = self.network.user(*_user_tensors(part, self.device))
            candidates = torch.as_tensor(part["candidate_item_ids"], dtype=torch.long, device=self.device)
            item_parts.append(self.network.item_values(user, candidates).cpu().numpy())
            none_parts.append(self.network.no_click_value(user).cpu().numpy())
        scale = 1.0 / self.config.reward_scale
        return np.concatenate(item_parts) * scale, np.concatenate(none_parts) * scale

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        if self.core is None:
            raise ValueError("SlateQAgent has no simulator attached; call attach(core) first")
        item_values, no_click_value = self.values(observation)
        core = self.core
        return optimise_slate(
            self.config.slate_optimiser,
            item_values,
            core.candidate_utilities(),
            core.position_bias,
            core.no_click_utility(),
            no_click_value,
        )

    def save(self, path: str | Path) -> Path:
        """Write config, network shape and weights to ``path`` (atomic)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": "longrec-slateq-v1",
            "config": asdict(self.config),
            "num_items": self.network.num_items,
            "context_dim": self.network.user_tower[0].in_features - self.config.embedding_dim,
            "popularity": self.network.popularity[:-1].cpu().numpy(),
            "state_dict": self.network.state_dict(),
            "catalog": self.catalog,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, core: BatchedSimulator | None = None, device: str = "cpu") -> SlateQAgent:
        path = Path(path)
        try:
            payload = torch.load(path, map_location=device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise ValueError(f"cannot read SlateQ checkpoint {str(path)!r}: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != "longrec-slateq-v1":
            raise ValueError(f"{str(path)!r} is not a SlateQ checkpoint (format longrec-slateq-v1)")
        known = {f.name for f in fields(SlateQConfig)}  # files from before num_envs became an argument have it
        config = SlateQConfig(**{k: v for k, v in payload["config"].items() if k in known})
        network = ItemQNetwork(
            payload["num_items"], payload["context_dim"], payload["popularity"], config.embedding_dim, config.hidden_dim
        )
        network.load_state_dict(payload["state_dict"])
        agent = cls(network.to(device), config, device=device)
        agent.catalog = payload.get("catalog")
        if core is not None:
            agent.attach(core)
        return agent


class _Replay:
    """Ring buffer of SlateQ transitions (numpy arrays, uniform sampling from a seeded generator)."""

    def __init__(self, capacity: int, history: int, candidates: int, slate_size: int, context_dim: int):
        self.capacity, self.size, self.cursor = capacity, 0, 0
        shapes = {
            "history_item_ids": ((history,), np.int64),
            "history_responses": ((history,), np.int8),
            "history_consumption": ((history,), np.float32),
            "context": ((context_dim,), np.float32),
            "chosen_item": ((), np.int64),  # -1: no click
            "reward": ((), np.float32),
            "done": ((), np.bool_),
            "next_history_item_ids": ((history,), np.int64),
            "next_history_responses": ((history,), np.int8),
            "next_history_consumption": ((history,), np.float32),
            "next_context": ((context_dim,), np.float32),
            "next_candidate_item_ids": ((candidates,), np.int64),
            "next_utilities": ((candidates,), np.float32),
            "next_no_click_utility": ((), np.float32),
            "next_slate": ((slate_size,), np.int64),
        }
        self.arrays = {key: np.zeros((capacity, *shape), dtype=dtype) for key, (shape, dtype) in shapes.items()}

    def add(self, batch: dict[str, np.ndarray]) -> None:
        n = len(batch["reward"])
        index = (self.cursor + np.arange(n)) % self.capacity
        for key, array in self.arrays.items():
            array[index] = batch[key]
        self.cursor = int((self.cursor + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        index = rng.integers(0, self.size, size=batch_size)
        return {key: array[index] for key, array in self.arrays.items()}


MetricsSink = Callable[[dict[str, float], int], None]


def train_slateq(
    env_id: str,
    total_timesteps: int,
    config: SlateQConfig | None = None,
    *,
    num_envs: int,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    metrics_sink: MetricsSink | None = None,
    log_interval: int = 10_000,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> SlateQAgent:
    """Train SlateQ for ``total_timesteps`` environment steps (user-steps) on ``env_id``.

    Experience comes from ``num_envs`` users at once with epsilon-greedy
    slates; Q(s, i) of the chosen item (or Q(s, none) after no click) is regressed
    on ``r + gamma * V(s', A')`` where ``V`` is the MNL-weighted slate value under the
    target network, ``A'`` the slate shown next (SARSA) or the greedy one
    (Q-learning); ends of life (churn or horizon) do not bootstrap. ``metrics_sink``
    receives ``{"charts/episodic_return", "charts/SPS", "losses/td_loss", ...}`` and
    the step count every ``log_interval`` steps.
    """
    config = config or SlateQConfig()
    if total_timesteps < 1:
        raise ValueError(f"total_timesteps={total_timesteps!r} must be >= 1")
    from envs.registration import make_core

    device_ = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 17])
    core = make_core(env_id, num_users=num_envs, **(env_kwargs or {}))
    network = ItemQNetwork(
        core.catalog.num_items, core.context_dim, core.catalog.popularity, config.embedding_dim, config.hidden_dim
    ).to(device_)
    learner = _TDLearner(network, config, core, device_)
    agent = SlateQAgent(network, config, core, device_)
    replay = _Replay(config.buffer_size, core.history_length, core.num_candidates, core.slate_size, core.context_dim)
    log = _TrainingLog(metrics_sink, log_interval, total_timesteps)

    observation = core.reset(seed=seed)
    pending: dict[str, np.ndarray] | None = None
    steps = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_timesteps, desc="SlateQ", unit="step", leave=False)
    while steps < total_timesteps:
        epsilon = _linear_epsilon(config, steps, total_timesteps)
        utilities = core.candidate_utilities().astype(np.float32)
        no_click = core.no_click_utility().astype(np.float32)
        slates = _explore(agent.act(observation), epsilon, rng, core)
        if pending is not None:  # complete last step's transitions with this state and slate
            replay.add(_completed(pending, observation, utilities, no_click, slates))
        result = core.step(slates)
        pending = _transition_start(observation, result)
        log.returns.extend(result.info["episode_return"][pending["done"]].tolist())
        observation = result.observation
        steps += core.num_users
        if bar is not None:
            bar.update(core.num_users)
        if replay.size >= max(config.learning_starts, config.batch_size):
            for _ in range(config.gradient_steps):
                log.losses.append(learner.step(replay.sample(rng, config.batch_size)))
        log.maybe_emit(steps, epsilon)
    if bar is not None:
        bar.close()
    agent.core = None  # the training core is not the evaluation core
    return agent


def _explore(slates: np.ndarray, epsilon: float, rng: np.random.Generator, core: BatchedSimulator) -> np.ndarray:
    """``slates`` with each user's replaced by a uniformly random slate with probability ``epsilon``."""
    explore = rng.random(core.num_users) < epsilon
    if explore.any():
        keys = rng.random((int(explore.sum()), core.num_candidates))
        slates[explore] = np.argsort(keys, axis=1)[:, : core.slate_size]
    return slates


def _transition_start(observation: dict[str, np.ndarray], result: Any) -> dict[str, np.ndarray]:
    """The first half of a step's transitions: state, chosen item, reward, end of life."""
    return {
        "history_item_ids": observation["history_item_ids"],
        "history_responses": observation["history_responses"],
        "history_consumption": observation["history_consumption"],
        "context": observation["context"],
        "chosen_item": result.info["clicked_item_id"],
        "reward": result.reward.astype(np.float32),
        "done": result.terminated | result.truncated,
    }


def _completed(pending: dict[str, np.ndarray], observation: dict[str, np.ndarray], utilities: np.ndarray,
               no_click: np.ndarray, slates: np.ndarray) -> dict[str, np.ndarray]:
    """``pending`` completed with the next state, its choice model and the slate shown next."""
    pending.update(
        next_history_item_ids=observation["history_item_ids"],
        next_history_responses=observation["history_responses"],
        next_history_consumption=observation["history_consumption"],
        next_context=observation["context"],
        next_candidate_item_ids=observation["candidate_item_ids"],
        next_utilities=utilities,
        next_no_click_utility=no_click,
        next_slate=slates,
    )
    return pending


class _TrainingLog:
    """Episode returns and TD losses since the last emission, sent to ``metrics_sink`` every ``interval`` steps."""

    def __init__(self, metrics_sink: MetricsSink | None, interval: int, total_timesteps: int) -> None:
        self.metrics_sink, self.interval, self.total_timesteps = metrics_sink, interval, total_timesteps
        self.returns: list[float] = []
        self.losses: list[float] = []
        self.last, self.start = 0, time.perf_counter()

    def maybe_emit(self, steps: int, epsilon: float) -> None:
        if self.metrics_sink is None or (steps - self.last < self.interval and steps < self.total_timesteps):
            return
        elapsed = time.perf_counter() - self.start
        metrics = {"charts/SPS": steps / max(elapsed, 1e-9), "charts/epsilon": epsilon}
        if self.returns:
            metrics["charts/episodic_return"] = float(np.mean(self.returns))
        if self.losses:
            metrics["losses/td_loss"] = float(np.mean(self.losses))
        self.metrics_sink(metrics, steps)
        self.returns, self.losses, self.last = [], [], steps


class _TDLearner:
    """The online network, its Polyak-averaged target copy and their Adam optimiser."""

    def __init__(self, network: ItemQNetwork, config: SlateQConfig, core: BatchedSimulator, device: torch.device):
        self.network = network
        self.target = copy.deepcopy(network).requires_grad_(False)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
        self.bias = torch.as_tensor(core.position_bias, dtype=torch.float32, device=device)
        self.config, self.device = config, device

    def step(self, batch: dict[str, np.ndarray]) -> float:
        return _td_step(self.network, self.target, self.optimizer, batch, self.bias, self.config, self.device)


def _linear_epsilon(config: SlateQConfig, steps: int, total_timesteps: int) -> float:
    progress = min(steps / max(config.epsilon_fraction * total_timesteps, 1.0), 1.0)
    return config.epsilon_start + progress * (config.epsilon_end - config.epsilon_start)


def _td_step(
    network: ItemQNetwork,
    target: ItemQNetwork,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, np.ndarray],
    bias: torch.Tensor,
    config: SlateQConfig,
    device: torch.device,
) -> float:
    """One TD step on the item-wise values; returns the loss."""
    t = {key: torch.as_tensor(value, device=device) for key, value in batch.items()}
    network.train()
    user = network.user(
        t["history_item_ids"], t["history_responses"].long(), t["history_consumption"], t["context"]
    )
    clicked = t["chosen_item"] >= 0
    item_q = network.item_values(user, t["chosen_item"].clamp(min=0).unsqueeze(1)).squeeze(1)
    prediction = torch.where(clicked, item_q, network.no_click_value(user))
    with torch.no_grad():
        next_user = target.user(
            t["next_history_item_ids"], t["next_history_responses"].long(), t["next_history_consumption"],
            t["next_context"],
        )
        next_q = target.item_values(next_user, t["next_candidate_item_ids"])  # (B, C)
        next_none = target.no_click_value(next_user)
        if config.td_target == "sarsa":
            next_slate = t["next_slate"]
        else:
            next_slate = torch.as_tensor(
                optimise_slate(
                    config.slate_optimiser,
                    next_q.cpu().numpy(),
                    batch["next_utilities"],
                    bias.cpu().numpy(),
                    batch["next_no_click_utility"],
                    next_none.cpu().numpy(),
                ),
                device=device,
            )
        slate_u = torch.gather(t["next_utilities"], 1, next_slate) + bias
        slate_q = torch.gather(next_q, 1, next_slate)
        logits = torch.cat([t["next_no_click_utility"].unsqueeze(1), slate_u], dim=1)
        probs = torch.softmax(logits, dim=1)
        next_value = probs[:, 0] * next_none + (probs[:, 1:] * slate_q).sum(1)
        target_value = t["reward"] * config.reward_scale + config.gamma * (~t["done"]).float() * next_value
    loss = nn.functional.smooth_l1_loss(prediction, target_value)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(network.parameters(), 10.0)
    optimizer.step()
    with torch.no_grad():
        for p_target, p in zip(target.parameters(), network.parameters(), strict=True):
            p_target.lerp_(p, config.target_update_tau)
    return float(loss.item())
