"""User-level differentially private training steps: DP-SGD (Abadi et al., CCS 2016) with Opacus.

The unit protected is a *user* (user-level DP as in McMahan et al., "Learning Differentially
Private Recurrent Language Models", ICLR 2018): all of one user's logged steps may be added or
removed and the trained weights barely change. Each step

1. samples users by Poisson sampling at rate ``q`` (Opacus's ``UniformWithReplacementSampler``);
2. computes each sampled user's gradient of their own loss, the mean over all their logged steps
   (or over their whole training window): one user is one "sample", so per-sample gradients are
   per-user gradients;
3. clips each user's gradient to norm ``C`` and adds Gaussian noise of std ``sigma * C`` to the
   sum (Opacus's ``DPOptimizer``, divided by the expected number of users ``q * n``);

and Opacus's accountant (RDP or PRV) reports the (epsilon, delta) spent after each step.

Per-user gradients come from one backward pass per sampled user (micro-batching), not from
per-layer hooks: the slate model applies its weights to the whole catalog as well as to the
batch (the pointer keys), which Opacus's ``GradSampleModule`` would take for samples. So no
layer is replaced, and the model trained with DP is the same module, computing in eval mode
exactly what it computes without DP. Opacus still does the sampling, the clipping, the noise and
the accounting; users are clipped in chunks with Opacus's gradient accumulation
(``signal_skip_step``), so memory holds ``chunk`` per-user gradients at a time.

What the guarantee covers: the gradient steps on the training users. Choices made from data
outside the private steps are not covered: the epoch kept by early stopping and the text-match
weights (picked on validation data), and, on MovieLens, the item statistics the features are
built from (item popularity, which items get an id vector).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.atomic_file import atomic_write_bytes
from llm_policy.config import DPConfig

__all__ = ["DPConfig", "DPStep", "UserLevelDP", "record_privacy", "require_opacus", "used_parameters"]

PRIVACY_KEY = "privacy"
"""key of the DP report in a saved policy's ``config.json``"""


def require_opacus() -> None:
    """Raise ImportError with the install command when Opacus is missing."""
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise ImportError("pretrain.dp needs Opacus: pip install 'longrec[privacy]' (or pip install opacus)") from None


def used_parameters(loss: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters ``loss`` depends on (the rest, e.g. the value head during CE, get no noise either)."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


@dataclass(frozen=True)
class DPStep:
    """What one private step did."""

    users: int
    """users sampled (Poisson: their number varies around ``q * n``)"""
    loss: float
    """mean loss of the sampled users (NaN when none was sampled)"""
    user_grad_norms: np.ndarray
    """``(users,)`` norm of each sampled user's gradient before clipping"""


class UserLevelDP:
    """DP-SGD over users: Poisson sampling, per-user clipping and noise (Opacus), and the accountant.

    Args:
        optimizer: the optimizer over ``params`` (wrapped in Opacus's ``DPOptimizer``).
        params: the trained weights (each must be used by the loss: see :func:`used_parameters`).
        config: the DP settings.
        num_users: training users (the sampling population; delta defaults to ``1 / num_users``).
        expected_users: users per step on average (the sampling rate is ``expected_users / num_users``).
        steps: planned steps (the noise multiplier is chosen so that ``config.epsilon`` is spent after them).
        seed: seeds the user sampling and the noise.
        chunk: users whose gradients are held in memory at once.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter], config: DPConfig,
                 num_users: int, expected_users: float, steps: int, seed: int, chunk: int = 32) -> None:
        require_opacus()
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        if not config.enabled:
            raise ValueError("UserLevelDP needs a DPConfig with epsilon or noise_multiplier set")
        if num_users < 1 or steps < 1 or expected_users <= 0:
            raise ValueError(f"num_users={num_users}, steps={steps} and expected_users={expected_users} must be positive")
        self.config = config
        self.params = list(params)
        self.num_users = int(num_users)
        self.sample_rate = min(1.0, float(expected_users) / self.num_users)
        self.expected_users = self.sample_rate * self.num_users
        self.delta = config.delta if config.delta is not None else 1.0 / self.num_users
        self.planned_steps = int(steps)
        self.chunk = max(1, int(chunk))
        if config.noise_multiplier is not None:
            self.noise_multiplier = float(config.noise_multiplier)
        else:
            self.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=config.epsilon, target_delta=self.delta, sample_rate=self.sample_rate,
                steps=self.planned_steps, accountant=config.accountant))
        self.accountant = create_accountant(config.accountant)
        self.optimizer = DPOptimizer(
            optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=config.max_grad_norm,
            expected_batch_size=self.expected_users, loss_reduction="mean",
            generator=torch.Generator(device=self.params[0].device).manual_seed(seed),
        )
        self._sampling = torch.Generator().manual_seed(seed + 1)
        self.steps = 0

    def sample_users(self) -> np.ndarray:
        """Indices ``0..num_users-1`` of the users of the next step (each one drawn with probability ``q``)."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        sampler = UniformWithReplacementSampler(num_samples=self.num_users, sample_rate=self.sample_rate,
                                                generator=self._sampling, steps=1)
        return np.asarray(next(iter(sampler)), dtype=np.int64)

    def step(self, user_loss: Callable[[int], torch.Tensor], users: Sequence[int] | None = None) -> DPStep:
        """One private step over ``users`` (default: :meth:`sample_users`); ``user_loss(u)`` is user u's loss.

        Leaves each weight's clipped sum of user gradients in ``p.summed_grad`` (Opacus) until the next step.
        """
        users = self.sample_users() if users is None else np.asarray(users, dtype=np.int64)
        self.optimizer.zero_grad(set_to_none=True)
        chunks = [users[i : i + self.chunk] for i in range(0, len(users), self.chunk)] or [users]
        losses, norms = [], []
        for j, chunk in enumerate(chunks):
            grads = []
            for u in chunk.tolist():
                loss = user_loss(u)
                grads.append(torch.autograd.grad(loss, self.params))
                losses.append(float(loss.detach()))
            for i, p in enumerate(self.params):
                p.grad_sample = torch.stack([g[i] for g in grads]) if grads else p.new_zeros((0, *p.shape))
            if grads:
                norms.append(torch.stack([torch.linalg.vector_norm(torch.stack([g.norm() for g in user]))
                                          for user in grads]).cpu().numpy())
            if j < len(chunks) - 1:  # Opacus's gradient accumulation: clip and sum now, noise once at the end
                self.optimizer.signal_skip_step(do_skip=True)
                self.optimizer.step()
                for p in self.params:
                    p.grad_sample = None
            else:
                self.optimizer.step()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1
        return DPStep(users=len(users), loss=float(np.mean(losses)) if losses else float("nan"),
                      user_grad_norms=np.concatenate(norms) if norms else np.zeros(0))

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (Opacus's accountant; 0 before the first step)."""
        return float(self.accountant.get_epsilon(delta=self.delta)) if self.steps else 0.0

    def report(self) -> dict[str, Any]:
        """``dp_epsilon`` (spent), ``dp_delta``, ``dp_noise_multiplier``, ... (flat, as metrics are)."""
        return {
            "dp_epsilon": self.epsilon(),
            "dp_delta": self.delta,
            "dp_target_epsilon": self.config.epsilon,
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_max_grad_norm": self.config.max_grad_norm,
            "dp_sample_rate": self.sample_rate,
            "dp_expected_users": self.expected_users,
            "dp_steps": self.steps,
            "dp_planned_steps": self.planned_steps,
            "dp_users": self.num_users,
            "dp_accountant": self.config.accountant,
            "dp_unit": "user",
        }


def record_privacy(policy_dir: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Add the DP report under ``"privacy"`` to a saved policy's ``config.json`` (``SlateModel.from_pretrained``
    ignores the key); returns the file."""
    path = Path(policy_dir) / "config.json"
    meta = json.loads(path.read_text())
    meta[PRIVACY_KEY] = {re.sub(r"^dp_", "", key): value for key, value in report.items()}
    atomic_write_bytes(path, json.dumps(meta, indent=2).encode())
    return path
