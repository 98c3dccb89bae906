"""B users as a native ``gymnasium.vector.VectorEnv`` over one ``BatchedSimulator``.

Autoreset mode is SAME_STEP: a finished user is replaced within the step; its
last observation is in ``info["final_obs"]`` (an object array, as
``SyncVectorEnv`` gives) and its info in ``info["final_info"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.core import BatchedSimulator
from envs.spaces import SlateSpace, rows, single_action_space, single_observation_space


class BatchedVectorEnv(VectorEnv):
    """A batch of independent simulated users stepped in lock step with numpy."""

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, core: BatchedSimulator) -> None:
        self.core = core
        self.num_envs = core.num_users
        self.single_observation_space = single_observation_space(core)
        self.single_action_space = single_action_space(core)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = SlateSpace(core.num_candidates, core.slate_size, num_slates=self.num_envs)

    @property
    def catalog(self):
        return self.core.catalog

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if isinstance(seed, list | tuple):
            seed = seed[0]
        if seed is not None:
            self._np_random, self._np_random_seed = None, seed
        return self.core.reset(seed=seed), {}

    def step(self, actions):
        result = self.core.step(np.asarray(actions))
        info: dict[str, Any] = dict(result.info)
        done = result.terminated | result.truncated
        if result.final_observation is not None:
            final_obs = np.full(self.num_envs, None, dtype=object)
            final_info = np.full(self.num_envs, None, dtype=object)
            ended = np.flatnonzero(done)  # only the few users whose episode ended
            for i, obs, user_info in zip(
                ended.tolist(), rows(result.final_observation, ended), rows(result.info, ended), strict=True
            ):
                final_obs[i], final_info[i] = obs, user_info
            info.update(final_obs=final_obs, _final_obs=done.copy(), final_info=final_info, _final_info=done.copy())
        return result.observation, result.reward, result.terminated, result.truncated, info

    def hidden_state(self) -> dict[str, np.ndarray]:
        return self.core.hidden_state()
