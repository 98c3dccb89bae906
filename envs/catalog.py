"""Item catalog: visible text and popularity, hidden quality and appeal.

Follows RecSim's document model (``recsim/document.py``) but as one set of
arrays for the whole catalog, so the batched core can index it with numpy.
Hidden properties (``quality``, ``appeal``) drive the user model; the policy
sees only item ids, texts and popularity.
"""

from __future__ import annotations

import hashlib
import math
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

    def fingerprint(self) -> str:
        """A short hash of the items' visible texts, in id order: two catalogs with the same fingerprint show
        the same items under the same ids (a policy that learned per-id vectors can serve only those)."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8"))
            digest.update(b"\0")
        return f"{self.num_items}-{digest.hexdigest()[:16]}"


LLM_CATALOG_HINT = ("serve it the new items with policy.set_catalog(ItemTextEncoder(<its text encoder>)"
                    ".encode_catalog(catalog), catalog.fingerprint())")
ID_CATALOG_HINT = "pass map_ids=True to apply its id vectors to the new items anyway (a no-transfer baseline)"


class CatalogMismatch(ValueError):
    """A policy meets a catalog other than the one it learned (its item ids would name other items)."""


def check_catalog(saved: str | None, current: str, what: str, hint: str = LLM_CATALOG_HINT) -> None:
    """Raise :class:`CatalogMismatch` when ``saved`` (a fingerprint, None = unknown) is not ``current``."""
    if saved is not None and saved != current:
        raise CatalogMismatch(f"{what} learned the catalog {saved}, but this env's catalog is {current} (another "
                              f"catalog_seed or preset): its item ids would name other items; {hint}")


def new_item_mask(num_items: int, share: float, seed: int = 0) -> np.ndarray:
    """(N,) bool: the ``share`` of the items that are new in a cold-start env (``SessionConfig.new_item_share``).

    A seeded draw of round(share * N) ids that does not touch the catalog (texts and fingerprint stay the
    same, so a policy trained where the new items never appear can be evaluated where they do); a larger
    share with the same seed keeps the new items of a smaller one.
    """
    if not (0.0 <= share < 1.0):
        raise ValueError(f"new_item_share={share!r} is out of range; allowed: [0, 1)")
    is_new = np.zeros(num_items, dtype=bool)
    is_new[np.random.default_rng(seed).permutation(num_items)[: math.floor(share * num_items + 0.5)]] = True
    return is_new


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
