"""Membership inference against a pretrained policy: the loss-threshold attack (Yeom et al., CSF 2018).

An attacker holds one user's log and asks whether that user was among the training users of the
policy. The attack scores the user by the policy's cross-entropy on the user's logged steps (the
mean over their steps, the loss pretraining minimised for them): a model that memorised its
training users fits them better than users it never saw. Its success over a set of training
users (members) and users the model never saw (non-members) is the ROC-AUC of the score
(``sklearn.metrics.roc_auc_score``; 0.5 = chance) and the best advantage ``max(TPR - FPR)`` over
thresholds. Under (epsilon, delta) user-level DP every threshold has ``TPR <= e^epsilon FPR + delta``
(Kairouz et al., ICML 2015), so a private policy keeps any such attack close to chance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from llm_policy.config import PretrainConfig
from llm_policy.model import SlateModel
from llm_policy.pretrain import LogTensors, _batch, _loss, _rows_for_target

__all__ = ["MembershipAttack", "loss_threshold_attack", "membership_inference", "user_losses"]


@dataclass(frozen=True)
class MembershipAttack:
    """Result of the loss-threshold attack."""

    auc: float
    """ROC-AUC of ``-loss`` as a member score (0.5 = chance, 1 = every member ranked above every non-member)"""
    advantage: float
    """best ``TPR - FPR`` over thresholds (0 = chance)"""
    members: int
    """training users attacked"""
    non_members: int
    """unseen users attacked"""
    member_loss: float
    """mean per-user loss of the members"""
    non_member_loss: float
    """mean per-user loss of the non-members"""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def user_losses(model: SlateModel, logs: Any, config: PretrainConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(users, losses)``: each user of ``logs`` with a training step for ``config.target``, and the model's mean
    loss over those steps (in eval mode; the same per-user loss as private pretraining clips)."""
    config = config or PretrainConfig()
    data = logs if isinstance(logs, LogTensors) else LogTensors.from_logs(logs)
    rows = _rows_for_target(data, config.target)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    users, owner = np.unique(data.user_id[rows], return_inverse=True)
    by_user = np.split(rows[np.argsort(owner, kind="stable")], np.cumsum(np.bincount(owner))[:-1]) if rows.size else []
    losses = np.array([float(_loss(model, config, *_batch(data, torch.as_tensor(r), device))) for r in by_user])
    model.train(was_training)
    return users, losses


def loss_threshold_attack(member_losses: np.ndarray, non_member_losses: np.ndarray) -> MembershipAttack:
    """ROC-AUC and advantage of "lower loss = member" over the given per-user losses."""
    from sklearn.metrics import roc_auc_score, roc_curve

    member_losses, non_member_losses = np.asarray(member_losses, float), np.asarray(non_member_losses, float)
    if member_losses.size == 0 or non_member_losses.size == 0:
        raise ValueError(f"the attack needs members and non-members, got {member_losses.size} and {non_member_losses.size}")
    labels = np.concatenate([np.ones(member_losses.size), np.zeros(non_member_losses.size)])
    scores = -np.concatenate([member_losses, non_member_losses])
    fpr, tpr, _ = roc_curve(labels, scores)
    return MembershipAttack(
        auc=float(roc_auc_score(labels, scores)), advantage=float(np.max(tpr - fpr)),
        members=int(member_losses.size), non_members=int(non_member_losses.size),
        member_loss=float(member_losses.mean()), non_member_loss=float(non_member_losses.mean()),
    )


def membership_inference(model: SlateModel, members: Any, non_members: Any,
                         config: PretrainConfig | None = None) -> MembershipAttack:
    """The loss-threshold attack on ``model`` with the logs of training users (``members``) and of users it never
    saw (``non_members``), both ``agents.logs.LoggedData`` (or :class:`~llm_policy.pretrain.LogTensors`)."""
    _, inside = user_losses(model, members, config)
    _, outside = user_losses(model, non_members, config)
    return loss_threshold_attack(inside, outside)
