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


class SlateSpace(spaces.MultiDiscrete):
    """``MultiDiscrete([C] * K)`` whose ``sample()`` draws K *distinct* candidates.

    ``contains`` is MultiDiscrete's (a slate with repeats is in the space, and the
    simulator rejects or penalises it); sampling never repeats, so random
    exploration and the environment checkers produce valid slates.
    """

    def __init__(
        self, num_candidates: int, slate_size: int, num_slates: int | None = None, seed: int | None = None
    ) -> None:
        if slate_size > num_candidates:
            raise ValueError(f"slate_size={slate_size} must be <= num_candidates={num_candidates}")
        shape = (slate_size,) if num_slates is None else (num_slates, slate_size)
        super().__init__(np.full(shape, num_candidates, dtype=np.int64), seed=seed)
        self.num_candidates, self.slate_size, self.num_slates = num_candidates, slate_size, num_slates

    def sample(self, mask=None, probability=None) -> np.ndarray:
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        rows = 1 if self.num_slates is None else self.num_slates
        keys = self.np_random.random((rows, self.num_candidates))
        slates = np.argsort(keys, axis=1)[:, : self.slate_size].astype(self.dtype)
        return slates[0] if self.num_slates is None else slates


def single_action_space(core: BatchedSimulator) -> SlateSpace:
    """A slate: K distinct indices into the candidate list (position 0 = top)."""
    return SlateSpace(core.num_candidates, core.slate_size)


def row(batch: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Observation of user ``i`` from a batched observation."""
    return {key: value[i] for key, value in batch.items()}


def rows(batch: dict[str, np.ndarray], indices: np.ndarray) -> list[dict[str, np.ndarray]]:
    """``[row(batch, i) for i in indices]``, gathering each array once (cheaper for many users)."""
    keys = list(batch)
    columns = [list(batch[key][indices]) for key in keys]  # numpy scalars / row arrays, as value[i]
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
