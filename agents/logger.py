"""The production logger: a click model on visible features, ranking by predicted click probability.

What a real click-optimised recommender would have written the logs with, and so the default
behaviour policy of every pipeline. It never reads the simulator's hidden state (quality,
appeal, topics, interest, satisfaction) nor its true choice model:

1. **Exploration logs**: uniformly random slates on ``exploration_users`` users of the same world
   (the system's randomised traffic), recording which shown item was clicked.
2. **Features** of a shown item, all visible: a low-rank TF-IDF embedding of its text (scikit-learn
   ``TfidfVectorizer`` + ``TruncatedSVD``), its visible popularity, the user's taste (the mean
   embedding of the items the user clicked in the history window), their elementwise product and
   cosine, and the slate position (one-hot, for the position bias).
3. **Click model**: logistic regression (scikit-learn) of click on those features, as a
   production pCTR model (McMahan et al. 2013, "Ad click prediction: a view from the trenches").
4. **Ranking**: the K candidates of highest predicted click probability, the best in the position
   whose fitted coefficient is largest (positions learned from the logs, not the true bias).

A click maximiser built like this falls into the clickbait trap as the true-model ``myopic`` agent
does (sensational wording predicts clicks), which is why RL on the long-term reward has something
to add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.baselines import RandomAgent, top_k_indices
from agents.evaluate import run_lives
from envs.core import RESPONSE_CLICK, BatchedSimulator


@dataclass(frozen=True)
class LoggerConfig:
    """How the production logger's click model is fitted."""

    exploration_users: int = 256
    """users of random slates whose clicks train the click model"""
    text_dims: int = 32
    """dimensions of the TF-IDF + SVD text embedding"""
    regularisation: float = 1.0
    """inverse L2 strength ``C`` of the logistic regression"""
    seed: int = 12_345
    """seed of the exploration users and the SVD (a fixed system, whatever the run's seed)"""


class VisibleFeatures:
    """Per-candidate features from visible data only: item texts, popularity and the observation."""

    def __init__(self, texts: tuple[str, ...], popularity: np.ndarray, text_dims: int, seed: int) -> None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        tfidf = TfidfVectorizer(min_df=2, sublinear_tf=True).fit_transform(texts)
        dims = max(1, min(text_dims, tfidf.shape[1] - 1))
        embedding = TruncatedSVD(n_components=dims, random_state=seed).fit_transform(tfidf)
        embedding /= np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-9)
        # row N (the history's padding id) is all zeros
        self.item_embedding = np.vstack([embedding, np.zeros((1, dims))]).astype(np.float32)
        self.popularity = np.append(np.asarray(popularity, dtype=np.float32), 0.0)

    def user_taste(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """(B, d) normalised mean embedding of each user's clicked history items (zeros: no click yet)."""
        clicked = (observation["history_responses"] == RESPONSE_CLICK).astype(np.float32)
        taste = np.einsum("bh,bhd->bd", clicked, self.item_embedding[observation["history_item_ids"]])
        return taste / np.maximum(np.linalg.norm(taste, axis=1, keepdims=True), 1e-9)

    def __call__(self, observation: dict[str, np.ndarray], items: np.ndarray) -> np.ndarray:
        """(B, M, F) features of ``items`` (B, M) for the users of ``observation``."""
        taste = self.user_taste(observation)[:, None, :]
        item = self.item_embedding[items]
        product = item * taste
        return np.concatenate([item, product, product.sum(axis=2, keepdims=True),
                               self.popularity[items][..., None]], axis=2)


class ProductionLogger:
    """A pCTR ranker fitted on visible features from exploration logs (see the module docstring)."""

    privileged = False

    def __init__(self, core: BatchedSimulator, config: LoggerConfig | None = None) -> None:
        self.config = config or LoggerConfig()
        self.slate_size = core.slate_size
        self.features = VisibleFeatures(core.catalog.texts, core.catalog.popularity, self.config.text_dims,
                                        self.config.seed)
        self.item_weights, self.position_weights, self.bias = self._fit(core)
        # the best item goes where the fitted position coefficient is largest
        self.position_order = np.argsort(-self.position_weights, kind="stable")

    def _fit(self, core: BatchedSimulator) -> tuple[np.ndarray, np.ndarray, float]:
        from sklearn.linear_model import LogisticRegression

        cfg = self.config
        world = BatchedSimulator(core.user_model, core.session, num_users=cfg.exploration_users)
        rows_x, rows_y = [], []

        def record(rows, observation, slates, result) -> None:
            shown = np.take_along_axis(observation["candidate_item_ids"], slates, axis=1)[rows]
            item_features = self.features({k: v[rows] for k, v in observation.items()}, shown)
            positions = np.broadcast_to(np.eye(self.slate_size, dtype=np.float32), (len(rows), *([self.slate_size] * 2)))
            rows_x.append(np.concatenate([item_features, positions], axis=2).reshape(-1, item_features.shape[2] + self.slate_size))
            clicked = result.info["clicked_position"][rows][:, None] == np.arange(self.slate_size)[None, :]
            rows_y.append(clicked.reshape(-1))

        explorer = RandomAgent(core.num_candidates, core.slate_size, seed=[cfg.seed, 1])
        run_lives(explorer, world, cfg.seed, agent_seed=[cfg.seed, 1], on_step=record)
        x, y = np.concatenate(rows_x), np.concatenate(rows_y)
        model = LogisticRegression(C=cfg.regularisation, max_iter=500).fit(x, y)
        weights = model.coef_[0]
        split = x.shape[1] - self.slate_size
        return weights[:split], weights[split:], float(model.intercept_[0])

    def reset(self, seed: int | None = None) -> None:
        pass

    def click_logits(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """(B, C) predicted click logit of each candidate at the top position (ranking score)."""
        return self.features(observation, observation["candidate_item_ids"]) @ self.item_weights

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        ranked = top_k_indices(self.click_logits(observation), self.slate_size)
        slates = np.empty_like(ranked)
        slates[:, self.position_order] = ranked
        return slates
