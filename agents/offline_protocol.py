"""Offline next-item benchmark protocol on implicit feedback (leave-one-out, full ranking).

The protocol is the one of SASRec (W.-C. Kang and J. McAuley, "Self-Attentive
Sequential Recommendation", ICDM 2018) and BERT4Rec, with the *full-ranking*
evaluation that W. Krichene and S. Rendle ("On Sampled Metrics for Item
Recommendation", KDD 2020) showed to be necessary (no sampled negatives):

1. every rating is an implicit interaction;
2. per user, interactions are sorted by timestamp (stable for ties);
3. users with fewer than ``min_interactions`` (5) interactions are dropped;
4. leave-one-out: the last interaction is the test target, the second-to-last
   the validation target, the rest is the training sequence;
5. a model scores **all** items; items the user interacted with before the
   target are excluded from the ranking (the target itself always stays);
6. the target's rank is *pessimistic* on ties (every other item scoring at
   least as high as the target ranks above it, so a constant scorer gets no
   credit), and HR@10 (= Recall@10 with one target), NDCG@10 and MRR@10 are
   averaged over users;
7. cold start: users are bucketed by how many training interactions (over all
   users' training sequences) their target item has: 0-4, 5-19, >= 20.

For the test target the model's input is the training sequence plus the
validation item; for the validation target it is the training sequence.

The ranking itself (steps 5 and 6) is ``llm_policy.metrics.target_ranks`` /
``full_catalog_ranks`` and ``ranking_metrics``, which next-item trainers use for
their validation too. ``agents.movielens_pretrain.pretrain_movielens`` runs the LLM policy's
next-item training (``llm_policy.next_item``) through this protocol on a MovieLens folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from llm_policy.metrics import full_catalog_ranks, ranking_metrics

__all__ = [
    "DEFAULT_BUCKETS",
    "EvaluationResult",
    "LeaveOneOutSplit",
    "NextItemScorer",
    "PopularityScorer",
    "bucket_labels",
    "evaluate_next_item",
    "format_table",
    "leave_one_out_split",
]

Stage = Literal["valid", "test"]
DEFAULT_BUCKETS: tuple[int, ...] = (5, 20)
"""Upper-exclusive edges of the cold-start buckets: [0, 5), [5, 20), [20, inf)."""
METRIC_NAMES = ("hr", "ndcg", "mrr")


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Leave-one-out split of per-user sequences (users with too few interactions dropped)."""

    num_items: int
    """Catalog size N: items are ``0..N-1``."""
    users: np.ndarray
    """(U,) int64 indices (into the input sequence list) of the kept users."""
    train: tuple[np.ndarray, ...]
    """Training sequence per kept user, oldest first (everything before the validation item)."""
    valid_target: np.ndarray
    """(U,) int64 second-to-last item of each kept user."""
    test_target: np.ndarray
    """(U,) int64 last item of each kept user."""

    @property
    def num_users(self) -> int:
        return int(self.users.shape[0])

    def histories(self, stage: Stage) -> list[np.ndarray]:
        """The model input per user for ``stage``: train (valid) or train + validation item (test)."""
        _check_stage(stage)
        if stage == "valid":
            return list(self.train)
        return [np.append(seq, v) for seq, v in zip(self.train, self.valid_target, strict=True)]

    def targets(self, stage: Stage) -> np.ndarray:
        _check_stage(stage)
        return self.valid_target if stage == "valid" else self.test_target

    def train_item_counts(self) -> np.ndarray:
        """(N,) int64 number of training interactions of each item (over all kept users)."""
        if not self.train:
            return np.zeros(self.num_items, dtype=np.int64)
        return np.bincount(np.concatenate(self.train), minlength=self.num_items).astype(np.int64)


def _check_stage(stage: str) -> None:
    if stage not in ("valid", "test"):
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


def leave_one_out_split(
    sequences: Sequence[np.ndarray], num_items: int, *, min_interactions: int = 5
) -> LeaveOneOutSplit:
    """Split time-ordered per-user item sequences (see the module docstring)."""
    if min_interactions < 3:
        raise ValueError(f"min_interactions must be >= 3 (train, valid and test need one item each), got {min_interactions}")
    if num_items <= 0:
        raise ValueError(f"num_items must be positive, got {num_items}")
    users, train, valid, test = [], [], [], []
    for u, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        if seq.ndim != 1:
            raise ValueError(f"sequence of user {u} must be 1-D, got shape {seq.shape}")
        if seq.size and (seq.min() < 0 or seq.max() >= num_items):
            raise ValueError(f"sequence of user {u} holds item ids outside [0, {num_items})")
        if seq.size < min_interactions:
            continue
        users.append(u)
        train.append(seq[:-2].copy())
        valid.append(seq[-2])
        test.append(seq[-1])
    if not users:
        raise ValueError(f"no user has >= {min_interactions} interactions")
    return LeaveOneOutSplit(
        num_items=num_items,
        users=np.asarray(users, dtype=np.int64),
        train=tuple(train),
        valid_target=np.asarray(valid, dtype=np.int64),
        test_target=np.asarray(test, dtype=np.int64),
    )


def bucket_labels(edges: Sequence[int] = DEFAULT_BUCKETS) -> tuple[str, ...]:
    """Labels of the cold-start buckets, e.g. ``("0-4", "5-19", ">=20")``."""
    edges = tuple(int(e) for e in edges)
    if not edges or edges[0] <= 0 or any(np.diff(edges) <= 0):
        raise ValueError(f"bucket edges must be positive and increasing, got {edges}")
    lows = (0, *edges)
    return tuple(f"{lo}-{hi - 1}" for lo, hi in zip(lows[:-1], edges, strict=True)) + (f">={edges[-1]}",)


class NextItemScorer(Protocol):
    """Anything that scores the whole catalog for a batch of user histories."""

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B, N) scores (higher = more likely next) for B histories of item ids, oldest first."""
        ...


@dataclass(frozen=True)
class PopularityScorer:
    """Scores every item by its number of training interactions (the same for all users)."""

    counts: np.ndarray

    @classmethod
    def fit(cls, split: LeaveOneOutSplit) -> PopularityScorer:
        return cls(counts=split.train_item_counts().astype(np.float64))

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


@dataclass(frozen=True)
class EvaluationResult:
    """Per-user ranks of one model on one stage, with the target items' training counts."""

    ranks: np.ndarray
    """(U,) 1-based pessimistic rank of each user's target."""
    target_train_counts: np.ndarray
    """(U,) training interactions of each user's target item."""
    k: int = 10
    bucket_edges: tuple[int, ...] = field(default=DEFAULT_BUCKETS)

    def metrics(self) -> dict[str, float]:
        """HR@k, NDCG@k, MRR@k over all users."""
        return ranking_metrics(self.ranks, self.k)

    def bucket_of_user(self) -> np.ndarray:
        """(U,) bucket index of each user's target."""
        return np.searchsorted(np.asarray(self.bucket_edges), self.target_train_counts, side="right")

    def by_bucket(self) -> dict[str, dict[str, float]]:
        """Metrics per cold-start bucket, plus ``"users"``: how many targets fall in it."""
        bucket = self.bucket_of_user()
        out = {}
        for b, label in enumerate(bucket_labels(self.bucket_edges)):
            ranks = self.ranks[bucket == b]
            out[label] = {"users": float(ranks.size), **ranking_metrics(ranks, self.k)}
        return out


def evaluate_next_item(
    scorer: NextItemScorer,
    split: LeaveOneOutSplit,
    *,
    stage: Stage = "test",
    k: int = 10,
    batch_size: int = 128,
    bucket_edges: Sequence[int] = DEFAULT_BUCKETS,
) -> EvaluationResult:
    """Rank every kept user's ``stage`` target with ``scorer`` over the full catalog."""
    if k <= 0 or batch_size <= 0:
        raise ValueError(f"k and batch_size must be positive, got k={k}, batch_size={batch_size}")
    bucket_labels(bucket_edges)
    targets = split.targets(stage)
    ranks = full_catalog_ranks(scorer.score, split.histories(stage), targets, split.num_items, batch_size=batch_size)
    return EvaluationResult(
        ranks=ranks,
        target_train_counts=split.train_item_counts()[targets],
        k=k,
        bucket_edges=tuple(int(e) for e in bucket_edges),
    )


def format_table(results: dict[str, EvaluationResult]) -> str:
    """Markdown tables: overall metrics per model, then NDCG@k / HR@k per cold-start bucket."""
    if not results:
        raise ValueError("no results to format")
    first = next(iter(results.values()))
    k = first.k
    lines = [f"| model | HR@{k} | NDCG@{k} | MRR@{k} |", "| --- | ---: | ---: | ---: |"]
    for name, res in results.items():
        m = res.metrics()
        lines.append(f"| {name} | {m[f'hr@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {m[f'mrr@{k}']:.4f} |")
    buckets = first.by_bucket()
    header = " | ".join(f"{label} ({int(v['users'])} users)" for label, v in buckets.items())
    lines += ["", f"NDCG@{k} (HR@{k}) by training interactions of the target item", ""]
    lines += [f"| model | {header} |", "| --- |" + " ---: |" * len(buckets)]
    for name, res in results.items():
        cells = [
            f"{v[f'ndcg@{k}']:.4f} ({v[f'hr@{k}']:.4f})" if v["users"] > 0 else "-" for v in res.by_bucket().values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
