"""longrec simulator: batched users with long-horizon satisfaction (numpy only).

``import envs`` registers the ``longrec/*`` ids with gymnasium. Build views with
``gymnasium.make(id)`` (one user), ``envs.make_vec(id, num_envs)`` (gymnasium
vector env) or ``envs.make_sb3_vec(id, num_envs)`` (stable-baselines3 VecEnv).
"""

from __future__ import annotations

from typing import Any

from envs import interest_evolution, movielens_preset, presets
from envs.core import BatchedSimulator
from envs.registration import describe, make_core, register_preset, registered_ids

register_preset("longrec/Video-v0", presets.video)
register_preset("longrec/Ecommerce-v0", presets.ecommerce)
register_preset("longrec/News-v0", presets.news)
register_preset("longrec/Music-v0", presets.music)
register_preset("longrec/Travel-v0", presets.travel)
register_preset("longrec/InterestEvolution-v0", interest_evolution.interest_evolution)
register_preset(movielens_preset.ENV_ID, movielens_preset.movielens)


def make_vec(env_id: str, num_envs: int = 1, **kwargs: Any):
    """A native ``gymnasium.vector.VectorEnv`` of ``num_envs`` users."""
    from envs.vector import BatchedVectorEnv

    return BatchedVectorEnv(make_core(env_id, num_users=num_envs, **kwargs))


def make_sb3_vec(env_id: str, num_envs: int = 1, **kwargs: Any):
    """A stable-baselines3 ``VecEnv`` of ``num_envs`` users."""
    from envs.sb3_vec import SB3VecEnv

    return SB3VecEnv(make_core(env_id, num_users=num_envs, **kwargs))


def get_core(env: Any) -> BatchedSimulator:
    """The ``BatchedSimulator`` behind any longrec view (also through gymnasium wrappers)."""
    for candidate in (env, getattr(env, "unwrapped", None)):
        core = getattr(candidate, "core", None)
        if isinstance(core, BatchedSimulator):
            return core
    raise ValueError(f"{type(env).__name__} is not a longrec environment (no BatchedSimulator core)")


__all__ = ["BatchedSimulator", "describe", "get_core", "make_core", "make_sb3_vec", "make_vec", "registered_ids"]
