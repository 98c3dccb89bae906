"""A policy's fingerprint: what it shows and what gets clicked, on the same fresh users.

Clickbait follows the clickbait-aware recommendation literature (Wang et al., "Clicks can be
Cheating", SIGIR 2021): an item whose pull (hidden ``appeal``) is high while its hidden ``quality``
is low. :class:`ClickbaitRule` fixes both thresholds as catalog quantiles, so a share is read
against the catalog's own base rate (a random policy shows clickbait at about that rate).

All shares are pooled: every shown item (or click, or slate) of every user counts once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.catalog import Catalog
from experiments.compare import save_figure

METRICS: dict[str, str] = {
    "clickbait_shown": "share of shown items that are clickbait",
    "clickbait_clicked": "share of clicked items that are clickbait",
    "quality_shown": "mean hidden quality of shown items",
    "quality_clicked": "mean hidden quality of clicked items",
    "appeal_shown": "mean hidden appeal (clickbait-ness) of shown items",
    "ctr": "share of slates with a click",
    "diversity": "distinct topics per slate / K, mean over slates",
    "topic_coverage": "distinct topics shown to a user / all topics, mean over users",
    "item_coverage": "distinct items shown to any user / catalog size",
    "repeat_rate": "share of shown items already shown to the same user earlier in the life",
}
"""fingerprint metrics and what each one is"""

BY_DAY_METRICS = ("clickbait_shown", "clickbait_clicked", "quality_shown", "diversity", "repeat_rate", "ctr")
"""the metrics plotted by day of the users' lives"""


@dataclass(frozen=True)
class ClickbaitRule:
    """Clickbait = appeal at or above the catalog's ``appeal_quantile`` and quality at or below its
    ``quality_quantile`` (defaults: the top quarter of appeal within the lower half of quality)."""

    appeal_quantile: float = 0.75
    """catalog quantile of hidden appeal an item must reach"""
    quality_quantile: float = 0.5
    """catalog quantile of hidden quality an item must not exceed"""

    def thresholds(self, catalog: Catalog) -> tuple[float, float]:
        """``(minimum appeal, maximum quality)`` of a clickbait item in ``catalog``."""
        return (float(np.quantile(catalog.appeal, self.appeal_quantile)),
                float(np.quantile(catalog.quality, self.quality_quantile)))

    def mask(self, catalog: Catalog) -> np.ndarray:
        """``(N,)`` bool: which catalog items are clickbait."""
        appeal_min, quality_max = self.thresholds(catalog)
        return (catalog.appeal >= appeal_min) & (catalog.quality <= quality_max)

    def describe(self, catalog: Catalog) -> str:
        appeal_min, quality_max = self.thresholds(catalog)
        return (f"appeal >= {appeal_min:.3f} (catalog {self.appeal_quantile:.0%} quantile) and quality <= "
                f"{quality_max:.3f} (catalog {self.quality_quantile:.0%} quantile): "
                f"{self.mask(catalog).mean():.1%} of the catalog")


@dataclass(frozen=True)
class ItemFacts:
    """What the fingerprint needs to know about the catalog (hidden facts included: this is analysis)."""

    topic: np.ndarray
    """(N,) int"""
    quality: np.ndarray
    """(N,) hidden quality"""
    appeal: np.ndarray
    """(N,) hidden appeal"""
    clickbait: np.ndarray
    """(N,) bool"""
    num_topics: int

    @classmethod
    def of(cls, catalog: Catalog, rule: ClickbaitRule) -> ItemFacts:
        return cls(catalog.topic, catalog.quality, catalog.appeal, rule.mask(catalog), catalog.num_topics)


def fingerprint(user: np.ndarray, slate_item_ids: np.ndarray, clicked_item: np.ndarray, items: ItemFacts) -> dict[str, float]:
    """The :data:`METRICS` of rows ``(user (T,), slate_item_ids (T, K), clicked_item (T,), -1 = no click)``,
    rows of one user in the order they happened."""
    user = np.asarray(user)
    shown = np.asarray(slate_item_ids)
    clicked_item = np.asarray(clicked_item)
    if shown.ndim != 2 or len(shown) != len(user) or len(clicked_item) != len(user):
        raise ValueError(f"need user (T,), slate_item_ids (T, K), clicked_item (T,); got {user.shape}, "
                         f"{shown.shape}, {clicked_item.shape}")
    k = shown.shape[1]
    if len(user) == 0:
        return {name: float("nan") for name in METRICS}
    clicks = clicked_item[clicked_item >= 0]
    topics = items.topic[shown]
    distinct = 1 + (np.diff(np.sort(topics, axis=1), axis=1) != 0).sum(axis=1)
    users = np.unique(user)
    topic_coverage = [len(np.unique(topics[user == u])) / items.num_topics for u in users]
    return {
        "clickbait_shown": float(items.clickbait[shown].mean()),
        "clickbait_clicked": float(items.clickbait[clicks].mean()) if len(clicks) else float("nan"),
        "quality_shown": float(items.quality[shown].mean()),
        "quality_clicked": float(items.quality[clicks].mean()) if len(clicks) else float("nan"),
        "appeal_shown": float(items.appeal[shown].mean()),
        "ctr": float((clicked_item >= 0).mean()),
        "diversity": float((distinct / k).mean()),
        "topic_coverage": float(np.mean(topic_coverage)),
        "item_coverage": float(len(np.unique(shown)) / len(items.topic)),
        "repeat_rate": float(_repeats(user, shown).mean()),
    }


def _repeats(user: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """(T, K) bool: the item was shown to the same user in an earlier row (or earlier in the same slate)."""
    flat_user = np.repeat(user, shown.shape[1])
    pairs = flat_user.astype(np.int64) * (int(shown.max()) + 1) + shown.ravel()
    _, first = np.unique(pairs, return_index=True)
    repeated = np.ones(pairs.shape, dtype=bool)
    repeated[first] = False  # np.unique's index is the first occurrence in row order
    return repeated.reshape(shown.shape)


def fingerprint_by_day(user: np.ndarray, day: np.ndarray, slate_item_ids: np.ndarray, clicked_item: np.ndarray,
                       items: ItemFacts) -> dict[int, dict[str, float]]:
    """``{day: metrics + "users" + "slates"}``: the metrics of each day of the lives (repeats count
    against the whole life so far, not just that day)."""
    repeated = _repeats(np.asarray(user), np.asarray(slate_item_ids))
    out = {}
    for d in np.unique(day):
        rows = np.flatnonzero(day == d)
        metrics = fingerprint(user[rows], slate_item_ids[rows], clicked_item[rows], items)
        metrics["repeat_rate"] = float(repeated[rows].mean())
        metrics["users"] = float(len(np.unique(user[rows])))
        metrics["slates"] = float(len(rows))
        out[int(d)] = metrics
    return out


def plot_fingerprints(fingerprints: Mapping[str, Mapping[str, float]], base_rate: float, path: Path) -> Path:
    """Grouped bars of the shares (left) and the hidden quality of shown / clicked items (right)."""
    import matplotlib.pyplot as plt

    labels = list(fingerprints)
    shares = ["clickbait_shown", "clickbait_clicked", "ctr", "diversity", "topic_coverage", "item_coverage", "repeat_rate"]
    quality = ["quality_shown", "quality_clicked", "appeal_shown"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 1.3]})
    width = 0.8 / max(len(labels), 1)
    for ax, names in ((axes[0], shares), (axes[1], quality)):
        x = np.arange(len(names))
        for i, label in enumerate(labels):
            values = [fingerprints[label].get(n, np.nan) for n in names]
            bars = ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.axhline(0, color="black", lw=0.6)
    axes[0].axhline(base_rate, color="crimson", ls=":", lw=1, label=f"catalog clickbait rate {base_rate:.2f}")
    axes[0].set_title("what the policy shows (shares)")
    axes[1].set_title("hidden item properties (means)")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def plot_by_day(by_day: Mapping[str, Mapping[int, Mapping[str, float]]], path: Path,
                metrics: Sequence[str] = BY_DAY_METRICS, min_users: int = 2) -> Path:
    """One panel per metric: its value on each day of the lives, per policy (days with at least
    ``min_users`` users alive; the marker size grows with the users alive)."""
    import matplotlib.pyplot as plt

    cols = 3
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        for label, days in by_day.items():
            kept = [d for d in sorted(days) if days[d]["users"] >= min_users] or sorted(days)
            values = [days[d][metric] for d in kept]
            sizes = [8 + 4 * days[d]["users"] for d in kept]
            (line,) = ax.plot(kept, values, lw=1.2, label=label)
            ax.scatter(kept, values, s=sizes, color=line.get_color(), alpha=0.6)
        ax.set_title(METRICS.get(metric, metric), fontsize=8)
        ax.set_xlabel("day of the user's life")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"how the policies shift over a user's life (days with >= {min_users} users alive; marker size = users)",
                 fontsize=9)
    return save_figure(fig, path)
