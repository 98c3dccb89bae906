"""Logged interaction data from a behaviour policy, for cross-entropy pretraining.

Like the logs a production recommender leaves behind (and the offline data of
off-policy / batch RL), the simulator records what a *behaviour policy* showed
and how users responded. The format is a single ``.npz`` file (see
``docs/architecture.md``): the five observation arrays stacked over T logged
steps, the slates (candidate indices and item ids), the clicked position and
item (-1 for no click), consumption, reward, user ids, and a ``meta`` JSON
string.

Behaviour policies (privileged: they read the simulator, like a tuned
production system would have learned to):

* ``random``: K distinct uniform candidates.
* ``myopic``: the K candidates of highest true click utility (the clickbait trap).
* ``noisy_quality``: candidates ranked by ``quality + interest - appeal`` plus
  Gumbel noise of scale ``temperature``: a decent but imperfect recommender.
* ``quality_aware``: the same ranking without noise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.core import BatchedSimulator
from envs.registration import make_core

OBSERVATION_KEYS = (
    "history_item_ids",
    "history_responses",
    "history_consumption",
    "candidate_item_ids",
    "context",
)
Behaviour = Callable[[BatchedSimulator, np.random.Generator], np.ndarray]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, best first."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def random_behaviour(core: BatchedSimulator, rng: np.random.Generator) -> np.ndarray:
    return top_k(rng.random((core.num_users, core.num_candidates)), core.slate_size)


def myopic_behaviour(core: BatchedSimulator, rng: np.random.Generator) -> np.ndarray:
    return top_k(core.candidate_utilities(), core.slate_size)


def noisy_quality_behaviour(
    core: BatchedSimulator, rng: np.random.Generator, temperature: float = 1.0
) -> np.ndarray:
    ids = core.candidate_item_ids
    catalog = core.catalog
    hidden = core.hidden_state()
    if "interest" in hidden and hidden["interest"].ndim == 2:
        interest = np.take_along_axis(hidden["interest"], catalog.topic[ids], axis=1)
    else:
        interest = 0.0
    score = catalog.quality[ids] + interest - catalog.appeal[ids]
    gumbel = -np.log(-np.log(rng.random(score.shape) + 1e-12) + 1e-12)
    return top_k(score + temperature * gumbel, core.slate_size)


def quality_aware_behaviour(core: BatchedSimulator, rng: np.random.Generator) -> np.ndarray:
    """``noisy_quality`` without noise: knows hidden quality and interest, avoids clickbait."""
    return noisy_quality_behaviour(core, rng, temperature=0.0)


BEHAVIOURS: dict[str, Behaviour] = {
    "random": random_behaviour,
    "myopic": myopic_behaviour,
    "noisy_quality": noisy_quality_behaviour,
    "quality_aware": quality_aware_behaviour,
}


@dataclass(frozen=True)
class LoggedData:
    """Arrays of a log file; observation arrays have a leading axis of T steps."""

    history_item_ids: np.ndarray
    history_responses: np.ndarray
    history_consumption: np.ndarray
    candidate_item_ids: np.ndarray
    context: np.ndarray
    slate: np.ndarray
    slate_item_ids: np.ndarray
    clicked_position: np.ndarray
    clicked_item_id: np.ndarray
    consumption: np.ndarray
    reward: np.ndarray
    user_id: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.slate)

    def observations(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key) for key in OBSERVATION_KEYS}


@dataclass
class LivesSummary:
    """Per-user totals of one life each (arrays of shape (num_users,))."""

    total_reward: np.ndarray
    clicks: np.ndarray
    slates: np.ndarray
    sessions: np.ndarray


StepCallback = Callable[[np.ndarray, dict[str, np.ndarray], np.ndarray, Any], None]


def simulate_lives(
    core: BatchedSimulator,
    policy: Callable[[BatchedSimulator, np.random.Generator], np.ndarray],
    seed: int,
    on_step: StepCallback | None = None,
    progress: bool = False,
) -> LivesSummary:
    """Run ``policy`` until every one of ``core``'s users has lived one whole episode.

    ``on_step(alive_rows, observation, slates, step_result)`` sees each step
    before the finished users are dropped. Users that finish are replaced by the
    core (auto-reset) but their replacements are not counted.
    """
    n = core.num_users
    observation = core.reset(seed=seed)
    rng = np.random.default_rng([seed, 1])
    alive = np.ones(n, dtype=bool)
    summary = LivesSummary(np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n))
    bar = _progress(progress, n)
    while alive.any():
        slates = policy(core, rng)
        result = core.step(slates)
        rows = np.flatnonzero(alive)
        if on_step is not None:
            on_step(rows, observation, slates, result)
        summary.total_reward[rows] += result.reward[rows]
        summary.clicks[rows] += result.info["clicked_position"][rows] >= 0
        summary.slates[rows] += 1
        finished = alive & (result.terminated | result.truncated)
        summary.sessions[finished] = result.info["day"][finished]
        alive &= ~finished
        if bar is not None:
            bar.update(int(finished.sum()))
        observation = result.observation
    if bar is not None:
        bar.close()
    return summary


def generate_logs(
    env_id: str,
    num_users: int,
    seed: int,
    path: str | Path | None = None,
    behaviour: str = "noisy_quality",
    progress: bool = False,
    **env_kwargs: Any,
) -> LoggedData:
    """Run ``behaviour`` on ``num_users`` users of ``env_id`` for one life each; save to ``path``.

    All users are simulated at once; a user's steps are logged until their
    episode ends (churn or horizon). Returns the ``LoggedData`` (and writes it
    as ``.npz`` when ``path`` is given).
    """
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour={behaviour!r} is not known; valid: {sorted(BEHAVIOURS)}")
    if num_users < 1:
        raise ValueError(f"num_users={num_users!r} must be >= 1")
    core = make_core(env_id, num_users=num_users, **env_kwargs)
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in LoggedData.__dataclass_fields__ if key != "meta"}

    def record(rows, observation, slates, result) -> None:
        for key in OBSERVATION_KEYS:
            chunks[key].append(observation[key][rows])
        chunks["slate"].append(slates[rows])
        chunks["slate_item_ids"].append(np.take_along_axis(observation["candidate_item_ids"], slates, 1)[rows])
        chunks["clicked_position"].append(result.info["clicked_position"][rows])
        chunks["clicked_item_id"].append(result.info["clicked_item_id"][rows])
        chunks["consumption"].append(result.info["consumption"][rows].astype(np.float32))
        chunks["reward"].append(result.reward[rows].astype(np.float32))
        chunks["user_id"].append(rows)

    simulate_lives(core, BEHAVIOURS[behaviour], seed, on_step=record, progress=progress)
    arrays = {key: np.concatenate(value) for key, value in chunks.items()}
    meta = {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "behaviour": behaviour,
        "seed": seed,
        "num_users": num_users,
        "num_items": core.catalog.num_items,
        "slate_size": core.slate_size,
        "num_candidates": core.num_candidates,
    }
    data = LoggedData(**arrays, meta=meta)
    if path is not None:
        save_logs(data, path)
    return data


def save_logs(data: LoggedData, path: str | Path) -> Path:
    """Write ``data`` to ``path`` (``.npz``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays = {key: getattr(data, key) for key in LoggedData.__dataclass_fields__ if key != "meta"}
    np.savez_compressed(tmp, meta=np.array(json.dumps(data.meta)), **arrays)
    tmp.replace(path)
    return path


def load_logs(path: str | Path) -> LoggedData:
    """Read a log written by ``generate_logs`` / ``save_logs``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"log file {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as archive:
        expected = [key for key in LoggedData.__dataclass_fields__]
        missing = [key for key in expected if key not in archive.files]
        if missing:
            raise ValueError(f"{path} is not a longrec log: missing arrays {missing}")
        arrays = {key: archive[key] for key in expected if key != "meta"}
        meta = json.loads(str(archive["meta"]))
    return LoggedData(**arrays, meta=meta)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="logging users", unit="user")
