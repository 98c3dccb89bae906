"""KL divergence to a frozen reference policy: estimators and coefficient controllers.

As in RLHF (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences"; Stiennon et al. 2020; TRL's PPO trainer), the fine-tuned policy
``p`` is kept close to the reference (pretrained) policy ``q`` by a penalty
``beta * KL(p || q)``. The KL is estimated from log-probabilities of actions
*sampled from p* with Schulman's estimators (J. Schulman, "Approximating KL
Divergence", 2020), with ``log r = log q(a) - log p(a)``:

* ``k1 = -log r = log p - log q``: unbiased, high variance, can be negative;
* ``k2 = (log r)^2 / 2``: biased, low variance, >= 0;
* ``k3 = (r - 1) - log r``: unbiased, low variance, >= 0.

All are 0 when the two policies agree. The coefficient ``beta`` is fixed or
adapted toward a target KL by Ziegler et al.'s proportional controller:
``beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)``.
"""

from __future__ import annotations

import torch

from agents.config import KL_ESTIMATORS, KLConfig

__all__ = ["KL_ESTIMATORS", "KLConfig", "kl_estimate", "FixedKLController", "AdaptiveKLController", "make_kl_controller"]


def kl_estimate(logp: torch.Tensor, logq: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-sample estimate of ``KL(p || q)`` from ``logp`` = log p(a), ``logq`` = log q(a), a ~ p.

    Returns a tensor of the broadcast shape; average it for the KL. Gradients flow
    through ``logp`` (and ``logq`` if it requires grad; a frozen reference does not).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator {estimator!r} is not known; valid: {KL_ESTIMATORS}")
    log_ratio = logq - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    return torch.expm1(log_ratio) - log_ratio


class FixedKLController:
    """A constant coefficient ``beta``."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, num_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al. 2019's proportional controller that steers the KL toward ``target``."""

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, num_steps: int) -> float:
        """Adapt ``beta`` after ``num_steps`` environment steps whose mean KL was ``current_kl``."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * num_steps / self.horizon
        return self.value


def make_kl_controller(config: KLConfig) -> FixedKLController | AdaptiveKLController:
    """The controller ``config`` asks for (adaptive when ``config.target`` is set)."""
    if config.target is None:
        return FixedKLController(config.coef)
    return AdaptiveKLController(config.coef, config.target, config.horizon)
