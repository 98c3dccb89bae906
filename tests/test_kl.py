"""KL estimators (k1/k2/k3) and coefficient controllers against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from agents.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLConfig,
    kl_estimate,
    make_kl_controller,
)

# p = (1/2, 1/2) is the policy, q = (1/4, 3/4) the reference
LOGP = torch.log(torch.tensor([0.5, 0.5]))
LOGQ = torch.log(torch.tensor([0.25, 0.75]))
TRUE_KL = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)


def test_per_sample_values_by_hand():
    # action 0: r = q/p = 1/2; action 1: r = 3/2
    k1 = kl_estimate(LOGP, LOGQ, "k1")
    k2 = kl_estimate(LOGP, LOGQ, "k2")
    k3 = kl_estimate(LOGP, LOGQ, "k3")
    torch.testing.assert_close(k1, torch.tensor([math.log(2), math.log(2 / 3)]))
    torch.testing.assert_close(k2, torch.tensor([0.5 * math.log(0.5) ** 2, 0.5 * math.log(1.5) ** 2]))
    torch.testing.assert_close(k3, torch.tensor([-0.5 - math.log(0.5), 0.5 - math.log(1.5)]))


def test_k1_and_k3_are_unbiased_under_the_policy():
    # exact expectation under p = (1/2, 1/2): the mean of the two per-action values
    for estimator in ("k1", "k3"):
        assert kl_estimate(LOGP, LOGQ, estimator).mean().item() == pytest.approx(TRUE_KL, rel=1e-6)
    assert TRUE_KL == pytest.approx(0.1438410, rel=1e-6)


def test_zero_for_identical_policies_and_nonnegative_k2_k3():
    logp = torch.log_softmax(torch.randn(64, 7, generator=torch.Generator().manual_seed(0)), dim=1)
    for estimator in ("k1", "k2", "k3"):
        assert torch.count_nonzero(kl_estimate(logp, logp.clone(), estimator)) == 0
    other = torch.log_softmax(torch.randn(64, 7, generator=torch.Generator().manual_seed(1)), dim=1)
    assert (kl_estimate(logp, other, "k3") >= 0).all() and (kl_estimate(logp, other, "k2") >= 0).all()
    assert (kl_estimate(logp, other, "k1") < 0).any()  # k1 can be negative per sample


def test_gradient_flows_through_the_policy_only():
    logp = LOGP.clone().requires_grad_(True)
    kl_estimate(logp, LOGQ, "k3").sum().backward()
    # d/dlogp [(exp(logq - logp) - 1) - (logq - logp)] = 1 - q/p
    torch.testing.assert_close(logp.grad, torch.tensor([1 - 0.5, 1 - 1.5]))


def test_adaptive_controller_follows_ziegler_et_al():
    controller = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    assert controller.update(current_kl=12.0, num_steps=1000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    value = controller.value
    assert controller.update(current_kl=6.0, num_steps=1000) == pytest.approx(value)  # on target
    assert controller.update(current_kl=3.0, num_steps=1000) == pytest.approx(value * (1 - 0.2 * 0.1))
    assert controller.update(current_kl=6.6, num_steps=10_000) == pytest.approx(value * 0.98 * 1.1)


def test_config_and_factory():
    assert isinstance(make_kl_controller(KLConfig(coef=0.2)), FixedKLController)
    fixed = make_kl_controller(KLConfig(coef=0.2))
    assert fixed.update(100.0, 10) == 0.2
    adaptive = make_kl_controller(KLConfig(coef=0.2, target=0.05, horizon=100))
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.target == 0.05
    with pytest.raises(ValueError, match="KL estimator 'k9'"):
        kl_estimate(LOGP, LOGQ, "k9")
    with pytest.raises(ValueError, match="coef=-1"):
        KLConfig(coef=-1)
    with pytest.raises(ValueError, match="target=0"):
        KLConfig(target=0)


def _shaped_reward_policy_gradient(theta: torch.Tensor, logq: torch.Tensor, estimator: str) -> torch.Tensor:
    """Exact expected REINFORCE gradient ``E_{a~p}[grad log p(a) * (-k(a))]`` of the reward ``-k(a)``."""
    logp = torch.log_softmax(theta, dim=0)
    penalty = kl_estimate(logp.detach(), logq, estimator)  # a reward: no gradient flows through it
    surrogate = (logp.exp().detach() * logp * -penalty).sum()
    (grad,) = torch.autograd.grad(surrogate, theta)
    return grad


def test_k1_as_a_shaped_reward_gives_the_gradient_of_the_kl_and_k3_does_not():
    """The PPO penalty shapes rewards with k1: its policy gradient is -grad KL(p || q) (RLHF's choice)."""
    theta = torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=torch.float64, requires_grad=True)
    logq = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5, 0.0], dtype=torch.float64), dim=0)
    logp = torch.log_softmax(theta, dim=0)
    kl = (logp.exp() * (logp - logq)).sum()
    (grad_kl,) = torch.autograd.grad(kl, theta)
    assert torch.allclose(_shaped_reward_policy_gradient(theta, logq, "k1"), -grad_kl, atol=1e-12)
    k3 = _shaped_reward_policy_gradient(theta, logq, "k3")
    assert not torch.allclose(k3, -grad_kl, atol=1e-3)  # k3 as a reward pushes elsewhere
    # near the reference k3's shaped-reward gradient vanishes to first order while the KL's does not
    near = (torch.log_softmax(logq.detach(), 0) + 0.05 * torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64))
    near = near.clone().requires_grad_(True)
    logp_near = torch.log_softmax(near, dim=0)
    (grad_near,) = torch.autograd.grad((logp_near.exp() * (logp_near - logq)).sum(), near)
    assert torch.allclose(_shaped_reward_policy_gradient(near, logq, "k1"), -grad_near, atol=1e-12)
    assert _shaped_reward_policy_gradient(near, logq, "k3").norm() < 0.1 * grad_near.norm()
