"""One user as a ``gymnasium.Env``: a view over a ``BatchedSimulator`` with B = 1."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.core import BatchedSimulator
from envs.spaces import row, single_action_space, single_observation_space


class SingleUserEnv(gym.Env):
    """A single simulated user's life over many sessions.

    The spec of each preset (what the user cares about, what ends a session,
    what brings a user back) is in the preset's docstring in ``envs.presets``
    and in the README. Observation, action and ``info`` keys are documented in
    ``docs/architecture.md``.
    """

    metadata = {"render_modes": []}

    def __init__(self, core: BatchedSimulator) -> None:
        if core.num_users != 1:
            raise ValueError(f"SingleUserEnv needs a core with num_users=1, got {core.num_users}")
        self.core = core
        self.observation_space = single_observation_space(core)
        self.action_space = single_action_space(core)
        self._needs_user_reset = False
        self._pending_observation: dict[str, np.ndarray] | None = None

    @property
    def catalog(self):
        return self.core.catalog

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self.core.is_reset:
            observation = row(self.core.reset(seed=seed), 0)
        elif self._pending_observation is not None:
            # the core already replaced the finished user (same draws as a vector env's autoreset)
            observation = self._pending_observation
        else:
            observation = row(self.core.reset_users(np.ones(1, dtype=bool)), 0)
        self._pending_observation = None
        self._needs_user_reset = False
        return observation, {}

    def step(self, action):
        if self._needs_user_reset:
            raise ValueError("step() called after the episode ended; call reset() first")
        observation, reward, terminated, truncated, info, final_observation = self.core.step_one_user(action)
        if terminated or truncated:
            self._needs_user_reset = True
            self._pending_observation = observation
            observation = final_observation
        return observation, reward, terminated, truncated, info

    def hidden_state(self) -> dict[str, np.ndarray]:
        """The user's hidden state (for oracles and analysis; never in observations)."""
        return {key: value[0] for key, value in self.core.hidden_state().items()}
