"""RecSim's interest_evolution environment, re-implemented batched in numpy.

Follows the dynamics of ``recsim.environments.interest_evolution`` as built by
its ``create_environment`` (Ie et al., 2019, "RecSim: A Configurable Simulation
Platform for Recommender Systems"; the same environment is used in the SlateQ
paper, Ie et al., IJCAI 2019). This is a re-implementation from the published
behaviour, vectorised over B users; no RecSim code is used.

Dynamics (one session per episode, the one longrec preset without retention):

* **Videos.** 20 clusters drawn uniformly; a video's features are the one-hot
  vector of its cluster. Cluster ``c`` has mean quality ``m_c``: 14 "trashy"
  clusters evenly spaced on ``[-3, 0]`` followed by 6 "nutritious" ones on
  ``[0, 3]``; a video's quality is ``N(m_c, 0.1)``. Every video lasts 4 minutes.
  RecSim draws fresh candidates every step; here candidates are drawn uniformly
  from a large catalog sampled from the same distribution (10,000 videos by
  default, 500 per cluster), which has the same per-step statistics.
* **Users.** Interests ``I ~ U(-1, 1)^20``, a time budget of 200 minutes.
* **Choice (multinomial proportional).** The affinity of video ``j`` is
  ``s_j = I . features_j = I[c_j]``. With ``min_normalizer = -1`` and
  ``no_click_mass = 1``, the user clicks slate item ``j`` with probability
  ``(s_j + 1) / (sum_k (s_k + 1) + 2)`` and nothing with ``2 / (...)``. Slate
  position does not matter; at most one click per slate.
* **Response.** A click watches ``min(time_left, 4)`` minutes; the reward is
  the watch time (``clicked_watchtime_reward``).
* **Budget.** A click costs the watch time and refunds
  ``(0.9 / 3.4) * watch_time * quality`` (``user_quality_factor = 0``,
  ``document_quality_factor = 1``), so high-quality videos lengthen the
  session. A slate without a click costs the step penalty, 0.5 minutes.
  The episode ends when the budget is <= 0.
* **Interest evolution.** After a click on cluster ``c`` only ``I[c]`` moves:
  by ``+/- alpha * (1 - I[c])`` with ``alpha = 0.3 * (1 - |I[c]|)``, the sign
  positive with probability ``(I[c] + 1) / 2``, then clipped to ``[-1, 1]``.

RecSim's ``score_scaling`` and ``attention_prob`` only matter for its cascade
choice models, which interest_evolution does not use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InterestEvolutionConfig:
    """Parameters of RecSim's interest_evolution (defaults = RecSim's values)."""

    num_clusters: int = 20
    """video clusters = user interest dimensions (RecSim's ``NUM_FEATURES``)"""
    num_items: int = 10_000
    """videos in the sampled catalog candidates are drawn from"""
    time_budget: float = 200.0
    """minutes of session time a new user has"""
    video_length: float = 4.0
    """minutes every video lasts"""
    min_cluster_quality: float = -3.0
    """mean quality of the worst ("trashiest") cluster"""
    max_cluster_quality: float = 3.0
    """mean quality of the best ("most nutritious") cluster"""
    trashy_fraction: float = 0.7
    """fraction of clusters with mean quality in [min_cluster_quality, 0]"""
    quality_sd: float = 0.1
    """standard deviation of a video's quality around its cluster mean"""
    no_click_mass: float = 1.0
    """choice score of not clicking (before the normaliser shift)"""
    min_normalizer: float = -1.0
    """subtracted from all choice scores to make them non-negative"""
    step_penalty: float = 0.5
    """minutes lost on a slate without a click"""
    budget_update_alpha: float = 0.9 / 3.4
    """budget refund per (minute watched x received utility)"""
    user_quality_factor: float = 0.0
    """weight of the choice score in the received utility"""
    document_quality_factor: float = 1.0
    """weight of the video's quality in the received utility"""
    alpha_x_intercept: float = 1.0
    """|interest| at which the interest step size reaches 0"""
    alpha_y_intercept: float = 0.3
    """interest step size at interest 0"""

    def __post_init__(self) -> None:
        if self.num_clusters < 2:
            raise ValueError(f"num_clusters={self.num_clusters!r} must be >= 2")
        if self.num_items < 1:
            raise ValueError(f"num_items={self.num_items!r} must be >= 1")
        for name in ("time_budget", "video_length", "alpha_x_intercept"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        if not 0.0 < self.trashy_fraction < 1.0:
            raise ValueError(f"trashy_fraction={self.trashy_fraction!r} must be in (0, 1)")
        if self.quality_sd < 0 or self.step_penalty < 0:
            raise ValueError(
                f"quality_sd={self.quality_sd!r} and step_penalty={self.step_penalty!r} must be >= 0"
            )
        # Proportional choice needs every shifted score (affinities lie in [-1, 1]) > 0.
        if self.min_normalizer > -1.0 or self.no_click_mass - self.min_normalizer <= 0:
            raise ValueError(
                f"min_normalizer={self.min_normalizer!r} must be <= -1 and no_click_mass={self.no_click_mass!r} "
                "must exceed it, so all proportional choice scores are non-negative"
            )


def cluster_quality_means(config: InterestEvolutionConfig) -> np.ndarray:
    """(num_clusters,) mean quality per cluster: trashy clusters first, then nutritious."""
    num_trashy = int(config.num_clusters * config.trashy_fraction)
    num_nutritious = int(config.num_clusters * (1.0 - config.trashy_fraction))
    # RecSim truncates both counts; keep the total right when they do not add up.
    num_nutritious += config.num_clusters - num_trashy - num_nutritious
    trashy = np.linspace(config.min_cluster_quality, 0.0, num_trashy)
    nutritious = np.linspace(0.0, config.max_cluster_quality, num_nutritious)
    return np.concatenate([trashy, nutritious])


def sample_videos(
    config: InterestEvolutionConfig, num_videos: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``num_videos`` videos: (cluster (n,) int64, quality (n,), length (n,))."""
    cluster = rng.integers(0, config.num_clusters, size=num_videos)
    quality = rng.normal(cluster_quality_means(config)[cluster], config.quality_sd)
    length = np.full(num_videos, config.video_length)
    return cluster.astype(np.int64), quality, length


def sample_interests(config: InterestEvolutionConfig, num_users: int, rng: np.random.Generator) -> np.ndarray:
    """(num_users, num_clusters) initial interests, uniform on [-1, 1]."""
    return rng.uniform(-1.0, 1.0, size=(num_users, config.num_clusters))


def choice_probabilities(affinity: np.ndarray, config: InterestEvolutionConfig) -> np.ndarray:
    """Multinomial proportional choice over a slate plus the no-click option.

    ``affinity`` (B, K) holds ``interest . features`` of the slate videos; returns
    (B, K + 1) probabilities, the last column being "no click".
    """
    scores = np.empty(affinity.shape[:-1] + (affinity.shape[-1] + 1,), dtype=np.float64)
    scores[..., :-1] = affinity - config.min_normalizer
    scores[..., -1] = config.no_click_mass - config.min_normalizer
    return scores / scores.sum(axis=-1, keepdims=True)


def sample_choice(probabilities: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Index drawn from each row of ``probabilities`` (B, K+1) by inverse CDF with ``uniform`` (B,)."""
    cdf = np.cumsum(probabilities, axis=-1)
    choice = (cdf < uniform[:, None] * cdf[:, -1:]).sum(axis=-1)
    return np.minimum(choice, probabilities.shape[-1] - 1)


def evolve_interest(
    interest: np.ndarray, positive: np.ndarray, config: InterestEvolutionConfig
) -> np.ndarray:
    """New value of the clicked cluster's interest (B,), given the sign coin ``positive`` (B,) bool.

    The step is ``alpha * (1 - I)`` with ``alpha`` falling linearly from
    ``alpha_y_intercept`` at ``I = 0`` to 0 at ``|I| = alpha_x_intercept``.
    """
    alpha = config.alpha_y_intercept - (config.alpha_y_intercept / config.alpha_x_intercept) * np.abs(
        interest
    )
    step = alpha * (1.0 - interest)
    return np.clip(np.where(positive, interest + step, interest - step), -1.0, 1.0)


def positive_update_probability(interest: np.ndarray) -> np.ndarray:
    """Probability that a click moves the interest up: ``(I + 1) / 2``."""
    return (interest + 1.0) / 2.0


def budget_after_click(
    time_left: np.ndarray,
    watch_time: np.ndarray,
    quality: np.ndarray,
    affinity: np.ndarray,
    config: InterestEvolutionConfig,
) -> np.ndarray:
    """Time left after watching: minus the watch time, plus the quality-driven refund."""
    # RecSim's "expected utility" is the clicked video's shifted choice score.
    received_utility = (
        config.user_quality_factor * (affinity - config.min_normalizer)
        + config.document_quality_factor * quality
    )
    return time_left - watch_time + config.budget_update_alpha * watch_time * received_utility
