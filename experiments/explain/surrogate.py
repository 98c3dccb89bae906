"""A readable surrogate of a slate policy: its candidate ranking distilled into a linear model over
named visible features (and a depth-3 regression tree), with its fidelity and its own long-term return.

Global surrogate models ("model distillation" for interpretability: Craven & Shavlik 1996; Molnar,
*Interpretable Machine Learning*, ch. "Global Surrogate"). The target is the policy's position-0
pointer logits over the C candidates of each recorded state; since a softmax over candidates ignores
a per-state shift, features and logits are centred within each state, so the model explains the
*ranking*. Features and logits are standardised over all candidate rows: a coefficient is the change
of the policy's logit, in its own standard deviations, per standard deviation of the feature, so the
coefficients of two policies compare.

Features (:data:`FEATURES`) use visible information only: the observation (history ids, responses),
the item's topic (its content category, named by the item's text), visible popularity, and two
text scores learned from *visible logs* (:class:`TextProbes`). The simulator's hidden quality and
appeal never enter a feature; the report only uses them afterwards to say what the text scores track.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.core import RESPONSE_CLICK
from experiments.compare import save_figure

FEATURES: dict[str, str] = {
    "topic_click_share": "share of the user's clicked history items with the candidate's topic",
    "topic_shown_share": "share of the history window's shown items with the candidate's topic (repetition)",
    "topic_click_recency": "1 for a click on the candidate's topic at the newest history slot, falling "
                           "linearly to 0 at the oldest; 0 when the topic was never clicked",
    "text_similarity": "cosine of the candidate's text embedding to the mean embedding of the user's clicked items",
    "click_pull": "text score of how often items like it are clicked when shown (sensational wording; "
                  "ridge probe of the text embedding on visible logs)",
    "watch_through": "text score of how much of items like it is consumed after a click (quality wording; "
                     "ridge probe on visible logs)",
    "popularity": "visible catalog popularity",
    "seen_recently": "the candidate is in the user's history window",
}
"""surrogate features and their meaning, in column order"""


@dataclass(frozen=True)
class SurrogateConfig:
    """How the surrogate and the text probes are fitted."""

    ridge_alpha: float = 1.0
    """L2 strength of the surrogate's ridge regression (on standardised, state-centred features)"""
    probe_alpha: float = 10.0
    """L2 strength of the two text probes (ridge regressions of the item text embedding)"""
    tree_depth: int = 3
    """depth of the readable regression tree"""
    tree_min_leaf: int = 50
    """minimum candidate rows per tree leaf"""


class TextProbes:
    """Two scores per catalog item learned from visible logs, z-scored over the catalog.

    * ``click_pull``: ridge regression of "clicked when shown" (one row per impression) on the
      item's text embedding;
    * ``watch_through``: ridge regression of the consumed fraction (one row per click).

    The logs are what a deployed system records (shown items, clicks, watch fractions); the
    embedding is the policy's own cached item text embedding.
    """

    def __init__(self, item_embeddings: np.ndarray, shown_items: np.ndarray, clicked: np.ndarray,
                 clicked_items: np.ndarray, consumption: np.ndarray, alpha: float = 10.0) -> None:
        from sklearn.linear_model import Ridge

        emb = np.asarray(item_embeddings, dtype=np.float64)
        if len(shown_items) < 2 or len(clicked_items) < 2:
            raise ValueError(f"text probes need logs with impressions and clicks; got {len(shown_items)} "
                             f"impressions, {len(clicked_items)} clicks")
        pull = Ridge(alpha=alpha).fit(emb[shown_items], np.asarray(clicked, dtype=np.float64))
        watch = Ridge(alpha=alpha).fit(emb[clicked_items], np.asarray(consumption, dtype=np.float64))
        self.scores = {"click_pull": _zscore(emb @ pull.coef_), "watch_through": _zscore(emb @ watch.coef_)}
        self.impressions, self.clicks = len(shown_items), len(clicked_items)

    @classmethod
    def from_slates(cls, item_embeddings: np.ndarray, slate_item_ids: np.ndarray, clicked_item: np.ndarray,
                    consumption: np.ndarray, alpha: float = 10.0) -> TextProbes:
        """From logged rows: slates ``(T, K)`` of catalog ids, the clicked id ``(T,)`` (-1 none), consumption ``(T,)``."""
        slate_item_ids = np.asarray(slate_item_ids)
        clicked_item = np.asarray(clicked_item)
        was_clicked = slate_item_ids == clicked_item[:, None]
        rows = clicked_item >= 0
        return cls(item_embeddings, slate_item_ids.ravel(), was_clicked.ravel(), clicked_item[rows],
                   np.asarray(consumption)[rows], alpha)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), 1e-12)


class SurrogateFeatures:
    """``(B, C, F)`` visible features of each candidate of each observation (columns: :data:`FEATURES`)."""

    names = tuple(FEATURES)

    def __init__(self, item_topic: np.ndarray, num_topics: int, popularity: np.ndarray, item_embeddings: np.ndarray,
                 probes: TextProbes) -> None:
        n = len(item_topic)
        self.num_items, self.num_topics = n, num_topics
        self.topic = np.append(np.asarray(item_topic), num_topics)  # padding id N: a topic of its own
        emb = np.asarray(item_embeddings, dtype=np.float64)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        self.unit_embedding = np.vstack([emb, np.zeros((1, emb.shape[1]))])
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.click_pull = probes.scores["click_pull"]
        self.watch_through = probes.scores["watch_through"]

    def __call__(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        hist = np.asarray(observation["history_item_ids"])
        responses = np.asarray(observation["history_responses"])
        cand = np.asarray(observation["candidate_item_ids"])
        b, h = hist.shape
        shown = (hist != self.num_items) & (responses != 0)
        clicked = shown & (responses == RESPONSE_CLICK)
        topics = self.num_topics + 1
        hist_topic = self.topic[hist]
        shown_counts = np.zeros((b, topics))
        click_counts = np.zeros((b, topics))
        recency = np.zeros((b, topics))
        rows = np.repeat(np.arange(b), h)
        np.add.at(shown_counts, (rows, hist_topic.ravel()), shown.ravel())
        np.add.at(click_counts, (rows, hist_topic.ravel()), clicked.ravel())
        # history slots run oldest -> newest: the newest click of a topic wins the maximum
        position_weight = np.broadcast_to((np.arange(h) + 1) / h, (b, h))
        np.maximum.at(recency, (rows, hist_topic.ravel()), (position_weight * clicked).ravel())
        cand_topic = self.topic[cand]
        user = np.arange(b)[:, None]
        taste = np.einsum("bh,bhd->bd", clicked.astype(np.float64), self.unit_embedding[hist])
        taste /= np.maximum(np.linalg.norm(taste, axis=1, keepdims=True), 1e-12)
        seen = (cand[:, :, None] == np.where(shown, hist, -1)[:, None, :]).any(axis=2)
        columns = [
            click_counts[user, cand_topic] / np.maximum(clicked.sum(1, keepdims=True), 1),
            shown_counts[user, cand_topic] / np.maximum(shown.sum(1, keepdims=True), 1),
            recency[user, cand_topic],
            np.einsum("bcd,bd->bc", self.unit_embedding[cand], taste),
            self.click_pull[cand],
            self.watch_through[cand],
            self.popularity[cand],
            seen.astype(np.float64),
        ]
        return np.stack(columns, axis=2)


def centre_per_state(values: np.ndarray) -> np.ndarray:
    """``values`` ``(S, C, ...)`` minus their mean over the C candidates of each state."""
    return values - values.mean(axis=1, keepdims=True)


def fidelity(surrogate_scores: np.ndarray, policy_scores: np.ndarray) -> dict[str, float]:
    """How well a surrogate's candidate scores ``(S, C)`` reproduce the policy's ``(S, C)``:

    * ``top1_agreement``: share of states where both put the same candidate first;
    * ``spearman``: Spearman rank correlation over the C candidates, averaged over states (states
      where either ranking is constant are left out).
    """
    from scipy.stats import rankdata

    surrogate_scores = np.asarray(surrogate_scores, dtype=np.float64)
    policy_scores = np.asarray(policy_scores, dtype=np.float64)
    if surrogate_scores.shape != policy_scores.shape or surrogate_scores.ndim != 2:
        raise ValueError(f"need two (states, candidates) arrays of one shape; got {surrogate_scores.shape} "
                         f"and {policy_scores.shape}")
    top1 = surrogate_scores.argmax(1) == policy_scores.argmax(1)
    a = centre_per_state(rankdata(surrogate_scores, axis=1))
    b = centre_per_state(rankdata(policy_scores, axis=1))
    denominator = np.sqrt((a**2).sum(1) * (b**2).sum(1))
    valid = denominator > 0
    rho = (a * b).sum(1)[valid] / denominator[valid]
    return {"top1_agreement": float(top1.mean()), "spearman": float(rho.mean()) if valid.any() else float("nan"),
            "states": float(len(top1))}


@dataclass
class Surrogate:
    """A fitted surrogate: standardised linear weights (and a tree) over :data:`FEATURES`."""

    features: SurrogateFeatures
    scale: np.ndarray
    """(F,) standard deviation of each state-centred feature (the standardisation)"""
    coef: np.ndarray
    """(F,) standardised coefficients: the policy's state-centred logit, in its standard deviations, per
    standard deviation of each feature"""
    tree: object
    """sklearn ``DecisionTreeRegressor`` over the same standardised, state-centred features"""

    def standardised(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        return centre_per_state(self.features(observation)) / self.scale

    def scores(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """``(B, C)`` linear surrogate scores."""
        return self.standardised(observation) @ self.coef

    def tree_scores(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        x = self.standardised(observation)
        return self.tree.predict(x.reshape(-1, x.shape[-1])).reshape(x.shape[:2])

    def rules(self) -> str:
        """The tree as indented if/else rules (sklearn ``export_text``)."""
        from sklearn.tree import export_text

        return export_text(self.tree, feature_names=[f"{n} (sd)" for n in self.features.names], decimals=2)


def fit_surrogate(features: SurrogateFeatures, observation: Mapping[str, np.ndarray], policy_scores: np.ndarray,
                  config: SurrogateConfig | None = None) -> Surrogate:
    """Fit the linear surrogate and the tree to the policy's logits ``(S, C)`` on the observations ``(S, ...)``."""
    from sklearn.linear_model import Ridge
    from sklearn.tree import DecisionTreeRegressor

    config = config or SurrogateConfig()
    x = centre_per_state(features(observation))
    scale = x.reshape(-1, x.shape[-1]).std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    x = (x / scale).reshape(-1, x.shape[-1])
    y = centre_per_state(np.asarray(policy_scores, dtype=np.float64)).ravel()
    y = y / max(float(y.std()), 1e-12)  # the policy's own scale: coefficients of two policies compare
    linear = Ridge(alpha=config.ridge_alpha, fit_intercept=False).fit(x, y)
    tree = DecisionTreeRegressor(max_depth=config.tree_depth, min_samples_leaf=config.tree_min_leaf,
                                 random_state=0).fit(x, y)
    return Surrogate(features, scale, linear.coef_.copy(), tree)


class SurrogateAgent:
    """Serve users with a surrogate: the K best-scored candidates, the best on top (``act`` / ``reset``)."""

    privileged = False

    def __init__(self, surrogate: Surrogate, slate_size: int, use_tree: bool = False) -> None:
        self.surrogate, self.slate_size, self.use_tree = surrogate, slate_size, use_tree

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        from agents.baselines import top_k_indices

        scores = self.surrogate.tree_scores(observation) if self.use_tree else self.surrogate.scores(observation)
        return top_k_indices(scores, self.slate_size)


def plot_coefficients(surrogates: Mapping[str, Surrogate], fidelities: Mapping[str, Mapping[str, float]],
                      path: Path, names: Sequence[str] = tuple(FEATURES)) -> Path:
    """Horizontal bars: each feature's standardised coefficient, one bar per policy."""
    import matplotlib.pyplot as plt

    labels = list(surrogates)
    fig, ax = plt.subplots(figsize=(8.5, 0.3 * len(names) * max(len(labels), 1) + 1.5))
    y = np.arange(len(names))
    height = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        fid = fidelities.get(label, {})
        ax.barh(y + (i - (len(labels) - 1) / 2) * height, surrogates[label].coef, height,
                label=f"{label} (top-1 agreement {fid.get('top1_agreement', np.nan):.2f}, "
                      f"Spearman {fid.get('spearman', np.nan):.2f})")
    ax.set_yticks(y, list(names), fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("standardised coefficient: the policy's score (in its standard deviations) per standard "
                  "deviation of the feature", fontsize=8)
    ax.set_title("linear surrogate of each policy's ranking (visible features only)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
