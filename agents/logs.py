"""Logged interaction data from a behaviour policy, for cross-entropy pretraining.

Like the logs a production recommender leaves behind (and the offline data of
off-policy / batch RL), the simulator records what a *behaviour policy* showed
and how users responded. The format is a single ``.npz`` file (see
``docs/architecture.md``): the five observation arrays stacked over T logged
steps, the slates (candidate indices and item ids), the clicked position and
item (-1 for no click), consumption, reward, user ids, and a ``meta`` JSON
string.

The behaviour policies are agents of ``agents.baselines`` (``BEHAVIOURS``);
``myopic``, ``noisy_quality`` and ``quality_aware`` are privileged: they read the
simulator, like a tuned production system would have learned to.

* ``random``: K distinct uniform candidates.
* ``myopic``: the K candidates of highest true click utility (the clickbait trap).
* ``noisy_quality``: candidates ranked by ``quality + interest - appeal`` plus
  Gumbel noise of scale 1: a decent but imperfect recommender.
* ``quality_aware``: the same ranking without noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.baselines import BEHAVIOURS, make_baseline
from agents.evaluate import LivesRecord, StepCallback, run_lives
from envs.atomic_file import atomic_open
from envs.core import BatchedSimulator
from envs.registration import make_core

__all__ = ["BEHAVIOURS", "LoggedData", "behaviour_lives", "generate_logs", "load_logs", "save_logs"]

OBSERVATION_KEYS = (
    "history_item_ids",
    "history_responses",
    "history_consumption",
    "candidate_item_ids",
    "context",
)


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


ARRAY_KEYS = tuple(key for key in LoggedData.__dataclass_fields__ if key != "meta")


def check_behaviour(behaviour: str) -> None:
    """A ValueError naming the valid behaviours unless ``behaviour`` is one."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour={behaviour!r} is not known; valid: {sorted(BEHAVIOURS)}")


def behaviour_lives(
    core: BatchedSimulator,
    behaviour: str,
    seed: int,
    on_step: StepCallback | None = None,
    progress: Any = None,
) -> LivesRecord:
    """One life of each of ``core``'s users under behaviour policy ``behaviour`` (``agents.evaluate.run_lives``).

    The conventions of the logs: the behaviour acts for every row of the core (also
    the replacements of finished users, which are not recorded) and its generator is
    seeded with ``[seed, 1]``, a stream apart from the core's ``seed``.
    """
    check_behaviour(behaviour)
    agent = make_baseline(behaviour, core)
    return run_lives(agent, core, seed, progress, agent_seed=[seed, 1], all_rows=True, on_step=on_step)


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
    check_behaviour(behaviour)
    if num_users < 1:
        raise ValueError(f"num_users={num_users!r} must be >= 1")
    core = make_core(env_id, num_users=num_users, **env_kwargs)
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in ARRAY_KEYS}

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

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_users, desc="logging users", unit="user")
    behaviour_lives(core, behaviour, seed, on_step=record, progress=bar)
    if bar is not None:
        bar.close()
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
    data = LoggedData(**{key: np.concatenate(value) for key, value in chunks.items()}, meta=meta)
    if path is not None:
        save_logs(data, path)
    return data


def save_logs(data: LoggedData, path: str | Path) -> Path:
    """Write ``data`` to ``path`` (``.npz``) atomically."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, meta=np.array(json.dumps(data.meta)), **{key: getattr(data, key) for key in ARRAY_KEYS})
    return path


def load_logs(path: str | Path) -> LoggedData:
    """Read a log written by ``generate_logs`` / ``save_logs``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"log file {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in (*ARRAY_KEYS, "meta") if key not in archive.files]
        if missing:
            raise ValueError(f"{path} is not a longrec log: missing arrays {missing}")
        arrays = {key: archive[key] for key in ARRAY_KEYS}
        meta = json.loads(str(archive["meta"]))
    return LoggedData(**arrays, meta=meta)
