"""Checkpoints: exact resume to the same step count, Ctrl-C saves, clear errors, device selection."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from agents.ppo import PPOConfig, train_ppo
from llm_policy.device import resolve_device

TINY = PPOConfig(n_steps=16, batch_size=64, n_epochs=2, mlp_embedding_dim=4, mlp_net_arch=(32,), checkpoint_every=256)
SETUP = dict(env_id="longrec/News-v0", policy="mlp", num_envs=16, device="cpu", seed=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parameters(result):
    return {k: v.clone() for k, v in result.model.policy.state_dict().items()}


def test_resume_reaches_2n_with_the_same_step_count_and_weights(tmp_path):
    straight = train_ppo(TINY, 1024, **SETUP)
    first = train_ppo(TINY, 512, checkpoint_dir=tmp_path, **SETUP)  # N = 512 steps, then stop
    assert first.num_timesteps == 512 and first.resumed_from is None
    assert load_checkpoint(checkpoint_path(tmp_path))["num_timesteps"] == 512
    resumed = train_ppo(TINY, 1024, checkpoint_dir=tmp_path, **SETUP)
    assert resumed.resumed_from == 512 and resumed.num_timesteps == 1024
    assert resumed.model._n_updates == straight.model._n_updates
    # the resumed run continues the saved one step for step: same weights as training 2N straight
    for key, value in parameters(straight).items():
        torch.testing.assert_close(parameters(resumed)[key], value, msg=f"parameter {key} differs")
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pt"], "temporary files left behind"


class InterruptAt(BaseCallback):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.step:
            raise KeyboardInterrupt
        return True


@pytest.mark.parametrize("stop_at", [80, 320, 512])
def test_ctrl_c_saves_the_last_boundary_and_resume_ends_as_an_uninterrupted_run(stop_at, tmp_path):
    """Ctrl-C in the middle of a rollout (256 steps each here) writes the state of the rollout's start; the
    resumed run replays that rollout and reaches exactly the budget with the uninterrupted run's weights."""
    config = dataclasses.replace(TINY, checkpoint_every=10_000, eval_every=256, eval_users=4, log_interval_steps=512)
    straight_rows, rows = [], []
    straight = train_ppo(config, 1024, metrics_sink=lambda m, step: straight_rows.append((step, m)), **SETUP)
    interrupted = train_ppo(config, 1024, checkpoint_dir=tmp_path, callbacks=[InterruptAt(stop_at)],
                            metrics_sink=lambda m, step: rows.append((step, m)),
                            checkpoint_extra=lambda: {"rows": len(rows)}, **SETUP)
    boundary = (stop_at - 1) // 256 * 256  # 512: the last step of the second rollout, before its update
    assert interrupted.interrupted and interrupted.num_timesteps == stop_at
    payload = load_checkpoint(checkpoint_path(tmp_path))
    assert payload["num_timesteps"] == boundary
    del rows[payload["extra"]["rows"]:]  # what a run folder does: the rows logged after the checkpoint go
    finished = train_ppo(config, 1024, checkpoint_dir=tmp_path, metrics_sink=lambda m, step: rows.append((step, m)),
                         **SETUP)
    assert finished.resumed_from == boundary and finished.num_timesteps == 1024 and not finished.interrupted
    for key, value in parameters(straight).items():
        torch.testing.assert_close(parameters(finished)[key], value, msg=f"parameter {key} differs")

    def without_clock(logged):
        return [(step, {k: v for k, v in m.items() if k != "charts/SPS"}) for step, m in logged]

    # the same rows (training windows every 512 steps, held-out evaluations every 256) as without the stop
    assert without_clock(rows) == without_clock(straight_rows)


def test_corrupt_and_incompatible_checkpoints_give_clear_errors(tmp_path):
    train_ppo(TINY, 256, checkpoint_dir=tmp_path, **SETUP)
    path = checkpoint_path(tmp_path)
    with pytest.raises(CheckpointError, match="env_id='longrec/News-v0'.*env_id='longrec/Music-v0'"):
        train_ppo(TINY, 256, checkpoint_dir=tmp_path, **{**SETUP, "env_id": "longrec/Music-v0"})
    with pytest.raises(CheckpointError, match="does not fit this policy"):
        train_ppo(dataclasses.replace(TINY, mlp_net_arch=(16,)), 256, checkpoint_dir=tmp_path, **SETUP)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt.*corrupt or truncated"):
        train_ppo(TINY, 256, checkpoint_dir=tmp_path, **SETUP)
    torch.save({"format": "something-else"}, path)
    with pytest.raises(CheckpointError, match="not a longrec checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_device_auto_and_errors():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='gpu0' is not known"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")
