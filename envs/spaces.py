"""Observation and action spaces of the simulator (one user, or a batch)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs.core import BatchedSimulator


def single_observation_space(core: BatchedSimulator) -> spaces.Dict:
    """Dict space of one user's observation (see docs/architecture.md)."""
    n, h, c = core.catalog.num_items, core.history_length, core.num_candidates
    return spaces.Dict(
        {
            "history_item_ids": spaces.Box(0, n, shape=(h,), dtype=np.int64),
            "history_responses": spaces.Box(0, 2, shape=(h,), dtype=np.int64),
            "history_consumption": spaces.Box(0.0, 1.0, shape=(h,), dtype=np.float32),
            "candidate_item_ids": spaces.Box(0, n - 1, shape=(c,), dtype=np.int64),
            "context": spaces.Box(0.0, 1.0, shape=(core.context_dim,), dtype=np.float32),
        }
    )


def single_action_space(core: BatchedSimulator) -> spaces.MultiDiscrete:
    """A slate: K indices into the candidate list."""
    return spaces.MultiDiscrete(np.full(core.slate_size, core.num_candidates, dtype=np.int64))


def row(batch: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Observation of user ``i`` from a batched observation."""
    return {key: value[i] for key, value in batch.items()}
