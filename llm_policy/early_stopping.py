"""Early stopping on a validation score, keeping the best weights (the CE trainers' shared helper).

The rule of SASRec's and BERT4Rec's reference training loops: evaluate after each epoch, keep a copy
of the weights with the best validation score, stop after ``patience`` evaluations without a better
one (optionally also when a wall-clock budget is spent) and return the best weights. Typical use::

    stopper = BestOnValidation(model, patience=5)
    for epoch in range(1, max_epochs + 1):
        train_one_epoch(model)
        if stopper.record(validation_ndcg(model), epoch):
            save_checkpoint(model)  # optional: this epoch is the best so far
        if stopper.should_stop:
            break
    stopper.restore_best()
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

__all__ = ["BestOnValidation"]


class BestOnValidation:
    """Keeps the weights of the best validation score (higher is better) and says when to stop.

    Args:
        model: the module whose ``state_dict`` is copied on every improvement (and once at the start,
            so :meth:`restore_best` works even if no evaluation improves on ``initial_score``).
        patience: stop once more than ``patience`` evaluations in a row did not beat the best score.
        initial_score: the score to beat (e.g. the untrained model's validation score, kept as
            epoch 0); a score must be strictly greater to count as better.
        time_budget_s: optional wall-clock budget in seconds: :attr:`should_stop` is also true once it
            is spent (this makes results machine-dependent).
        start: ``time.perf_counter()`` value the budget is measured from (default: now).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        patience: int,
        *,
        initial_score: float = float("-inf"),
        time_budget_s: float | None = None,
        start: float | None = None,
    ) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.model, self.patience, self.time_budget_s = model, patience, time_budget_s
        self.start = time.perf_counter() if start is None else start
        self.best_state: dict[str, Any] = copy.deepcopy(model.state_dict())
        self.best_score: float = initial_score
        """Best score recorded so far (``initial_score`` before any improvement)."""
        self.best_epoch: int = 0
        """Epoch of :attr:`best_score` (0: none improved on ``initial_score``)."""
        self.stale: int = 0
        """Evaluations since the last improvement."""

    def record(self, score: float, epoch: int) -> bool:
        """Take one validation score; a better one keeps a copy of the current weights. Returns whether it was better."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        """More than ``patience`` evaluations without improvement, or the time budget spent."""
        over_budget = self.time_budget_s is not None and time.perf_counter() - self.start > self.time_budget_s
        return self.stale > self.patience or over_budget

    def state_dict(self) -> dict[str, Any]:
        """The best weights, score, epoch and evaluations since: what a resumed run continues from
        (the time budget, a wall-clock matter, starts again)."""
        return {"best_state": self.best_state, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        self.best_state = copy.deepcopy(state["best_state"])
        self.best_score, self.best_epoch, self.stale = state["best_score"], state["best_epoch"], state["stale"]

    def restore_best(self) -> None:
        """Load the best weights into the model and put it in eval mode."""
        self.model.load_state_dict(self.best_state)
        self.model.eval()
