"""Atomic, resumable training checkpoints for SB3 agents on the batched simulator.

A checkpoint is one file (``<dir>/last.pt``, written to a temporary file and
moved into place with ``os.replace``, so a crash never leaves a half-written
checkpoint) holding everything a run needs to continue *exactly*:

* the policy's and optimizer's state dicts, the step counter (``num_timesteps``)
  and SB3's update counter;
* the random state: Python ``random``, NumPy's global generator (SB3 shuffles
  minibatches with it), torch (CPU and CUDA), the policy's private sampling
  generators (``LLMSlatePolicy(seed=...)``);
* the simulator: the core's generator (with the draws it has buffered) and its
  users (hidden state, history, candidates, episode counters), and SB3's
  ``_last_episode_starts``;
* anything the trainer adds under ``extra`` (KL coefficient, reference policy).

Checkpoints are taken at rollout boundaries (after an update), where resuming
reproduces the uninterrupted run step for step. ``load_checkpoint`` turns a
missing, truncated, foreign or incompatible file into a ``CheckpointError``
that names the file and what is wrong.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.atomic_file import atomic_open
from envs.block_random import BlockRandom
from envs.core import BatchedSimulator

CHECKPOINT_FORMAT = "longrec-checkpoint-v1"
CHECKPOINT_NAME = "last.pt"
CORE_STATE_KEYS = (
    "_state",
    "history_item_ids",
    "history_responses",
    "history_consumption",
    "candidate_item_ids",
    "episode_return",
    "episode_length",
)
REQUIRED_KEYS = ("format", "num_timesteps", "n_updates", "policy", "optimizer", "rng", "env", "meta")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (missing, corrupt, foreign or incompatible)."""


# -- random state ----------------------------------------------------------------------------------


def capture_rng_state(policy: Any = None) -> dict[str, Any]:
    """Python, NumPy-global, torch (and CUDA) states, plus the policy's private generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - SB3 shuffles minibatches with it
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    generators = getattr(policy, "_generators", None)
    if isinstance(generators, dict):
        state["policy_generators"] = {key: gen.get_state() for key, gen in generators.items()}
    return state


def restore_rng_state(state: dict[str, Any], policy: Any = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("policy_generators")
    if saved and hasattr(policy, "_generator"):
        policy._generators.clear()
        generator = policy._generator()  # creates the generator of the policy's current device
        key = next(iter(policy._generators), None)
        if generator is not None and key in saved:
            generator.set_state(saved[key])


# -- simulator state ---------------------------------------------------------------------------------


def capture_core_state(core: BatchedSimulator) -> dict[str, Any]:
    """A deep copy of the simulator's users and generator (enough to continue identically)."""
    if not core.is_reset:
        raise ValueError("cannot checkpoint a simulator before reset()")
    state = {key: copy.deepcopy(getattr(core, key)) for key in CORE_STATE_KEYS}
    state["random"] = core.rng.get_state()  # the generator and the draws it has buffered
    state["num_users"] = core.num_users
    state["num_items"] = core.catalog.num_items
    return state


def restore_core_state(core: BatchedSimulator, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """Put ``state`` back into ``core``; returns the restored observation."""
    if state["num_users"] != core.num_users or state["num_items"] != core.catalog.num_items:
        raise CheckpointError(
            f"checkpoint simulator has {state['num_users']} users x {state['num_items']} items; this run has "
            f"{core.num_users} x {core.catalog.num_items}"
        )
    for key in CORE_STATE_KEYS:
        setattr(core, key, copy.deepcopy(state[key]))
    if "random" in state:
        core.rng = BlockRandom.from_state(state["random"])
    else:  # written before the core buffered its draws: the generator alone
        core.np_random = np.random.default_rng()
        core.np_random.bit_generator.state = copy.deepcopy(state["np_random"])
    return core.observation()


# -- files -------------------------------------------------------------------------------------------


def atomic_torch_save(payload: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def checkpoint_payload(
    model: Any,
    core: BatchedSimulator,
    meta: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A snapshot of SB3 ``model`` (policy, optimizer, counters, RNG) and the simulator ``core``, deep-copied:
    training may go on while it waits to be written (Ctrl-C writes the snapshot of the last rollout boundary).

    ``meta`` identifies the run (env id, policy kind, ...); ``load_checkpoint`` checks it
    against the resuming run.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "policy": copy.deepcopy(model.policy.state_dict()),
        "optimizer": copy.deepcopy(model.policy.optimizer.state_dict()),
        "rng": capture_rng_state(model.policy),
        "env": {
            "core": capture_core_state(core),
            "last_episode_starts": copy.deepcopy(model._last_episode_starts),
        },
        "meta": {**meta, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__},
        "extra": copy.deepcopy(extra or {}),
    }


def save_checkpoint(
    path: str | Path,
    model: Any,
    core: BatchedSimulator,
    meta: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write :func:`checkpoint_payload` of ``model`` and ``core`` to ``path`` atomically; returns the path."""
    return atomic_torch_save(checkpoint_payload(model, core, meta, extra), path)


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def find_checkpoint(directory: str | Path | None) -> Path | None:
    """``<directory>/last.pt`` if it exists."""
    if directory is None:
        return None
    path = checkpoint_path(directory)
    return path if path.exists() else None


def load_checkpoint(path: str | Path, expected_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read and validate a checkpoint; ``expected_meta`` entries must match the saved ones.

    Raises ``CheckpointError`` naming the file and the problem (missing, unreadable or
    truncated, not a longrec checkpoint, missing entries, written for another run).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated and cannot be read ({type(err).__name__}: {err}); "
            "delete it to start afresh"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{str(path)!r} is not a longrec checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks entries {missing}")
    for key, value in (expected_meta or {}).items():
        saved = payload["meta"].get(key)
        if saved != value:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written with {key}={saved!r}, but this run has {key}={value!r}; "
                "use another checkpoint folder or the matching settings"
            )
    return payload


def restore_model(path: str | Path, payload: dict[str, Any], model: Any) -> None:
    """Load policy weights, optimizer state and counters of ``payload`` into SB3 ``model``."""
    try:
        model.policy.load_state_dict(payload["policy"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:4]
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this policy ({type(model.policy).__name__}): " + " ".join(first)
        ) from err
    try:
        model.policy.optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: optimizer state does not fit this policy ({err})") from err
    model.num_timesteps = payload["num_timesteps"]
    model._n_updates = payload["n_updates"]
