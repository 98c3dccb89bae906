"""B users as a stable-baselines3 ``VecEnv`` over one ``BatchedSimulator``.

SB3 does not take gymnasium vector envs, so this adapter speaks SB3's
protocol (``step_async``/``step_wait``, list of info dicts with
``terminal_observation`` and ``TimeLimit.truncated``) over the same core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from envs.core import BatchedSimulator
from envs.spaces import rows, single_action_space, single_observation_space


class SB3VecEnv(VecEnv):
    """SB3 view of B simulated users (auto-resets finished users, as SB3 expects)."""

    def __init__(self, core: BatchedSimulator) -> None:
        self.core = core
        self.render_mode = None
        super().__init__(core.num_users, single_observation_space(core), single_action_space(core))
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    @property
    def catalog(self):
        return self.core.catalog

    def reset(self):
        observation = self.core.reset(seed=self._seed)
        self._seed = None
        self._reset_seeds()
        self._reset_options()
        return observation

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        self._seed = seed
        return [seed] * self.num_envs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        result = self.core.step(self._actions)
        done = result.terminated | result.truncated
        info = result.info
        keys = ("session_ended", "returned", "churned", "day", "clicked_position", "consumption")
        columns = [info[key].tolist() for key in keys]
        infos: list[dict[str, Any]] = [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
        ended = np.flatnonzero(done)  # only the users whose episode ended
        final_observations = rows(result.final_observation, ended) if len(ended) else []
        for i, observation in zip(ended, final_observations, strict=True):
            infos[i]["terminal_observation"] = observation
            infos[i]["TimeLimit.truncated"] = bool(result.truncated[i] and not result.terminated[i])
            infos[i]["episode"] = {"r": float(info["episode_return"][i]), "l": int(info["episode_length"][i])}
        return result.observation, result.reward.astype(np.float32), done, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs)] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))

    def hidden_state(self) -> dict[str, np.ndarray]:
        return self.core.hidden_state()
