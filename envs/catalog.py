"""Item catalog: visible text and popularity, hidden quality and appeal.

Follows RecSim's document model (``recsim/document.py``) but as one set of
arrays for the whole catalog, so the batched core can index it with numpy.
Hidden properties (``quality``, ``appeal``) drive the user model; the policy
sees only item ids, texts and popularity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from envs.config import CatalogConfig

TextGenerator = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], list[str]]
"""(topic, quality, appeal, rng) -> one text per item"""


@dataclass(frozen=True, eq=False)
class Catalog:
    """All items of one simulated world (arrays indexed by item id)."""

    topic: np.ndarray
    """(N,) int: primary topic of each item"""
    topic_names: tuple[str, ...]
    """name of each topic (T of them)"""
    quality: np.ndarray
    """(N,) float32, hidden: how good the item is (roughly standard normal)"""
    appeal: np.ndarray
    """(N,) float32 in [0, 1], hidden: clickbait-ness, how much the item pulls a click"""
    length: np.ndarray
    """(N,) float32: minutes to consume the whole item (price for products)"""
    popularity: np.ndarray
    """(N,) float32 in [0, 1], visible: a prior of how often the item is chosen"""
    texts: tuple[str, ...]
    """title + short description of each item (visible)"""

    def __post_init__(self) -> None:
        n = len(self.topic)
        for name in ("quality", "appeal", "length", "popularity"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"catalog.{name} has {len(getattr(self, name))} items, topic has {n}")
        if len(self.texts) != n:
            raise ValueError(f"catalog.texts has {len(self.texts)} items, topic has {n}")

    @property
    def num_items(self) -> int:
        return len(self.topic)

    @property
    def num_topics(self) -> int:
        return len(self.topic_names)


def sample_catalog(
    config: CatalogConfig,
    topic_names: Sequence[str],
    text_generator: TextGenerator,
    rng: np.random.Generator,
) -> Catalog:
    """Draw a catalog: topics (Zipf-skewed), quality, coupled appeal, lengths, then texts."""
    num_topics = len(topic_names)
    if num_topics < 1:
        raise ValueError("a catalog needs at least one topic name")
    n = config.num_items
    topic_weights = 1.0 / np.arange(1, num_topics + 1) ** config.topic_skew
    topic_weights = rng.permutation(topic_weights / topic_weights.sum())
    topic = rng.choice(num_topics, size=n, p=topic_weights)
    quality = rng.standard_normal(n)
    appeal_logit = config.quality_appeal_coupling * quality + config.appeal_noise * rng.standard_normal(n)
    appeal = 1.0 / (1.0 + np.exp(-appeal_logit))
    length = np.clip(rng.lognormal(config.length_log_mean, config.length_log_sd, n), 0.5, config.max_length)
    # Visible popularity is what logs would show: attractive items get chosen more.
    popularity_logit = 1.5 * appeal_logit / (1.0 + abs(config.quality_appeal_coupling)) + 0.5 * quality
    popularity = 1.0 / (1.0 + np.exp(-popularity_logit))
    texts = text_generator(topic, quality, appeal, rng)
    return Catalog(
        topic=topic.astype(np.int64),
        topic_names=tuple(topic_names),
        quality=quality.astype(np.float32),
        appeal=appeal.astype(np.float32),
        length=length.astype(np.float32),
        popularity=popularity.astype(np.float32),
        texts=tuple(texts),
    )
