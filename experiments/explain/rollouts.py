"""Whole user lives under a greedy slate policy, with what the user saw and what the simulator hid.

One row per (user, step) of the users' first lives (``agents.evaluate.run_lives``, the evaluation
protocol: same env, users and seed give the same lives): the visible observation, the greedy slate,
the policy's candidate scores, the response, and the hidden state after the step
(``core.hidden_state()``; the rows of a user whose life just ended come from
``StepResult.final_hidden_state``, taken before the core replaced the user).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.evaluate import LivesRecord, run_lives
from envs.core import BatchedSimulator, StepResult
from llm_policy.model import OBS_KEYS, SlateModel

HIDDEN_KEYS = ("satisfaction", "fatigue", "interest")
"""hidden-state arrays recorded per step (those the user model has)"""


class GreedySlateAgent:
    """A :class:`~llm_policy.model.SlateModel` as a batched agent: the greedy slate (as
    ``PolicyAgent(LLMSlatePolicy, deterministic=True)`` decodes it), keeping the position-0 candidate
    logits of its last call in ``last_scores`` ``(B, C)`` (the ranking the surrogate imitates)."""

    privileged = False

    def __init__(self, model: SlateModel, slate_size: int) -> None:
        self.model = model.eval()
        self.slate_size = slate_size
        self.last_scores: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> None:
        self.last_scores = None

    @torch.no_grad()
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        device = self.model.item_embeddings.device
        obs = {key: torch.as_tensor(np.asarray(observation[key])).to(device) for key in OBS_KEYS}
        state = self.model.encode(obs)
        self.last_scores = self.model.candidate_scores(state).float().cpu().numpy()
        return self.model.generate(state, self.slate_size, greedy=True).slate.cpu().numpy().astype(np.int64)


@dataclass
class Trace:
    """Rows of (user, step) of the users' first lives under one policy (arrays with a leading axis of T rows)."""

    label: str
    user: np.ndarray
    """(T,) user index in the core"""
    step: np.ndarray
    """(T,) step in the user's life (0 = first slate)"""
    day: np.ndarray
    """(T,) sessions the user had completed before this step"""
    observation: dict[str, np.ndarray]
    """the five observation arrays the policy saw, (T, ...)"""
    slate: np.ndarray
    """(T, K) candidate indices, position 0 on top"""
    slate_item_ids: np.ndarray
    """(T, K) catalog ids shown"""
    scores: np.ndarray
    """(T, C) the policy's position-0 logits of the candidates"""
    clicked_item: np.ndarray
    """(T,) catalog id clicked, -1 = none"""
    consumption: np.ndarray
    """(T,) consumed fraction of the clicked item"""
    reward: np.ndarray
    session_ended: np.ndarray
    returned: np.ndarray
    churned: np.ndarray
    truncated: np.ndarray
    hidden: dict[str, np.ndarray]
    """hidden state after the step, e.g. ``satisfaction (T,)``, ``fatigue (T, topics)``, ``interest (T, topics)``"""
    initial_hidden: dict[str, np.ndarray]
    """hidden state of each user before the first step, ``(users, ...)``"""
    lives: LivesRecord
    """the evaluation protocol's per-user outcomes (return, sessions, ...)"""
    num_users: int
    extra: dict[str, Any] = field(default_factory=dict)

    def rows_of(self, user: int) -> np.ndarray:
        """Row indices of ``user``'s life, in order."""
        return np.flatnonzero(self.user == user)


def record_lives(model: SlateModel, core: BatchedSimulator, seed: int, label: str, progress: Any = None) -> Trace:
    """Run the greedy policy of ``model`` for one life of each of ``core``'s users (``core.reset(seed)``)."""
    agent = GreedySlateAgent(model, core.slate_size)
    core.reset(seed=seed)  # run_lives resets with the same seed: the same users, read before their first step
    initial = {key: value for key, value in core.hidden_state().items() if key in HIDDEN_KEYS}
    rows_out: dict[str, list[np.ndarray]] = {}
    day = np.zeros(core.num_users, dtype=np.int64)
    life_step = np.zeros(core.num_users, dtype=np.int64)

    def keep(name: str, value: np.ndarray) -> None:
        rows_out.setdefault(name, []).append(np.asarray(value))

    def on_step(rows: np.ndarray, observation: dict[str, np.ndarray], slates: np.ndarray, result: StepResult) -> None:
        info = result.info
        keep("user", rows)
        keep("step", life_step[rows].copy())
        keep("day", day[rows])
        for key in OBS_KEYS:
            keep(f"obs/{key}", observation[key][rows])
        keep("slate", slates[rows])
        keep("slate_item_ids", np.take_along_axis(observation["candidate_item_ids"][rows], slates[rows], axis=1))
        keep("scores", agent.last_scores)
        keep("clicked_item", info["clicked_item_id"][rows])
        keep("consumption", info["consumption"][rows])
        keep("reward", result.reward[rows])
        keep("session_ended", info["session_ended"][rows])
        keep("returned", info["returned"][rows])
        keep("churned", result.terminated[rows])
        keep("truncated", result.truncated[rows])
        hidden = core.hidden_state()
        done = (result.terminated | result.truncated)[rows]
        for key in initial:
            values = hidden[key][rows]
            if done.any():
                values[done] = result.final_hidden_state[key][rows][done]
            keep(f"hidden/{key}", values)
        day[rows] = info["day"][rows]
        life_step[rows] += 1

    lives = run_lives(agent, core, seed, progress=progress, on_step=on_step)
    arrays = {name: np.concatenate(parts) for name, parts in rows_out.items()}
    return Trace(
        label=label,
        user=arrays["user"],
        step=arrays["step"],
        day=arrays["day"],
        observation={key: arrays[f"obs/{key}"] for key in OBS_KEYS},
        slate=arrays["slate"],
        slate_item_ids=arrays["slate_item_ids"],
        scores=arrays["scores"],
        clicked_item=arrays["clicked_item"],
        consumption=arrays["consumption"],
        reward=arrays["reward"],
        session_ended=arrays["session_ended"].astype(bool),
        returned=arrays["returned"].astype(bool),
        churned=arrays["churned"].astype(bool),
        truncated=arrays["truncated"].astype(bool),
        hidden={key: arrays[f"hidden/{key}"] for key in initial},
        initial_hidden=initial,
        lives=lives,
        num_users=core.num_users,
    )
