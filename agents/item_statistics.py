"""Logged engagement statistics of each item: what a production system counts, read by the LLM policy.

A real recommender keeps counters per item (impressions, clicks, how much of a video was watched) and
feeds them to its rankers next to the content. These are *visible* data: they are computed from the
logged responses alone (``agents.logs.LoggedData``: the slates shown, the clicked item, the consumed
fraction), never from the simulator's hidden quality or interest. Three columns per item:

* ``completion``: the item's mean consumed fraction over its logged clicks (watched share of a video,
  purchase rate, read share), shrunk toward the log's mean with ``prior`` pseudo-clicks, minus that
  mean, over the standard deviation of the consumed fraction of all logged clicks;
* ``click_rate``: clicks per impression, shrunk toward the log's rate with ``prior`` pseudo-impressions,
  minus that rate, over its binomial standard deviation;
* ``log_clicks``: ``log(1 + clicks)`` over its largest value in the log (in [0, 1]).

An item the logs never showed has zeros in every column, as has the padding row: "nothing logged"
(e.g. every item of a new catalog). ``with_item_statistics`` appends the columns to the text
embeddings, the way the MovieLens pipeline appends popularity and release year; a policy built with
``policy.item_statistics=true`` knows that its last ``len(ITEM_STATISTICS)`` item features are these.

    stats = logged_item_statistics(logs, num_items=2000)     # (2000, 3)
    features = with_item_statistics(text_embeddings, logs)   # (2000, d + 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.baselines import top_k_indices
from llm_policy.config import ITEM_STATISTICS

__all__ = ["ITEM_STATISTICS", "CompletionGreedyAgent", "logged_item_statistics", "with_item_statistics"]
PRIOR_WEIGHT = 5.0
"""pseudo-observations of the log-wide mean that every item's completion and click rate start from"""


def logged_item_statistics(logs: Any, num_items: int, prior: float = PRIOR_WEIGHT) -> np.ndarray:
    """``(num_items, 3)`` float32 statistics (``ITEM_STATISTICS``) of the items in ``logs`` (a ``LoggedData``).

    Reads only ``slate_item_ids``, ``clicked_item_id`` and ``consumption``: what the logs recorded
    users doing, nothing hidden. Items never shown get zeros.
    """
    if num_items < 1:
        raise ValueError(f"num_items={num_items!r} must be >= 1")
    if prior <= 0:
        raise ValueError(f"prior={prior!r} must be > 0")
    shown_ids = np.asarray(logs.slate_item_ids).ravel()
    clicked_ids = np.asarray(logs.clicked_item_id)
    clicked = clicked_ids >= 0
    clicked_ids, fractions = clicked_ids[clicked], np.asarray(logs.consumption, dtype=np.float64)[clicked]
    for name, ids in (("slate_item_ids", shown_ids), ("clicked_item_id", clicked_ids)):
        if ids.size and ids.max() >= num_items:
            raise ValueError(f"the logs' {name} reach item {int(ids.max())}, beyond the catalog's {num_items} items: "
                             "statistics must come from logs of the same catalog")
    stats = np.zeros((num_items, len(ITEM_STATISTICS)), dtype=np.float64)
    impressions = np.bincount(shown_ids, minlength=num_items).astype(np.float64)
    clicks = np.bincount(clicked_ids, minlength=num_items).astype(np.float64)
    if clicks.sum() == 0:
        return stats.astype(np.float32)
    mean_fraction = fractions.mean()
    sums = np.bincount(clicked_ids, weights=fractions, minlength=num_items)
    completion = (sums + prior * mean_fraction) / (clicks + prior)
    stats[:, 0] = (completion - mean_fraction) / max(fractions.std(), 1e-6)
    rate = clicks.sum() / impressions.sum()
    shrunk_rate = (clicks + prior * rate) / (impressions + prior)
    stats[:, 1] = (shrunk_rate - rate) / max(np.sqrt(rate * (1.0 - rate)), 1e-6)
    stats[:, 2] = np.log1p(clicks) / np.log1p(clicks.max())
    stats[impressions == 0] = 0.0
    return stats.astype(np.float32)


def with_item_statistics(text_embeddings: Any, logs: Any | None) -> np.ndarray:
    """``(N, d + 3)``: the text embeddings with the items' logged statistics appended (zeros without ``logs``)."""
    text = np.asarray(text_embeddings, dtype=np.float32)
    if text.ndim != 2:
        raise ValueError(f"text_embeddings must have shape (num_items, dim), got {text.shape}")
    stats = (logged_item_statistics(logs, len(text)) if logs is not None
             else np.zeros((len(text), len(ITEM_STATISTICS)), dtype=np.float32))
    return np.concatenate([text, stats], axis=1)


class CompletionGreedyAgent:
    """Ranks the candidates by their logged completion rate (``ITEM_STATISTICS[0]``): no model, no RL.

    What the logs' engagement counters alone recommend; non-privileged (the counters are logged
    responses). Built from a policy whose item table carries the statistics (the CE start's), so it
    reads the same logs as that policy. Ties (e.g. items never logged) keep the candidate order.
    """

    privileged = False

    def __init__(self, completion: np.ndarray, slate_size: int) -> None:
        self.completion = np.asarray(completion, dtype=np.float64)
        self.slate_size = slate_size

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return top_k_indices(self.completion[observation["candidate_item_ids"]], self.slate_size)
