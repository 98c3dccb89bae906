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
  (distinct within a step) from a large catalog sampled from the same
  distribution (10,000 videos by default, exactly 500 per cluster), which has
  the same per-step statistics.
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

Differences from RecSim, by design: the observation does not contain the
user's interests (RecSim's does; here they are in ``hidden_state()`` for
oracles), all randomness comes from the generator seeded in ``reset``
(RecSim draws clicks from the global ``np.random``), and candidates come from
a fixed catalog so that item ids and texts are stable. Fidelity of returns is
checked against RecSim itself by ``benchmarks/recsim_fidelity.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.catalog import Catalog
from envs.config import SessionConfig
from envs.core import BatchedSimulator, Transition


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
    config: InterestEvolutionConfig, num_videos: int, rng: np.random.Generator, stratified: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``num_videos`` videos: (cluster (n,) int64, quality (n,), length (n,)).

    Clusters are uniform, as in RecSim. ``stratified`` gives every cluster the
    same number of videos (the remainder to distinct random clusters), in a
    random order: a catalog then has exactly RecSim's cluster frequencies,
    without the few-percent sampling wobble per cluster that would otherwise
    shift every return computed on that catalog.
    """
    if stratified:
        per_cluster, remainder = divmod(num_videos, config.num_clusters)
        extra = rng.choice(config.num_clusters, size=remainder, replace=False)
        cluster = rng.permutation(
            np.concatenate([np.repeat(np.arange(config.num_clusters), per_cluster), extra])
        )
    else:
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


def interest_step(interest: np.ndarray | float, config: InterestEvolutionConfig) -> np.ndarray | float:
    """Size of a clicked cluster's interest move (arrays or a Python float).

    The step is ``alpha * (1 - I)`` with ``alpha`` falling linearly from
    ``alpha_y_intercept`` at ``I = 0`` to 0 at ``|I| = alpha_x_intercept``.
    """
    alpha = config.alpha_y_intercept - (config.alpha_y_intercept / config.alpha_x_intercept) * abs(interest)
    return alpha * (1.0 - interest)


def evolve_interest(
    interest: np.ndarray, positive: np.ndarray, config: InterestEvolutionConfig
) -> np.ndarray:
    """New value of the clicked cluster's interest (B,), given the sign coin ``positive`` (B,) bool.

    ``interest`` moves up or down by ``interest_step`` and is clipped to [-1, 1].
    """
    step = interest_step(interest, config)
    # np.minimum/np.maximum: same as np.clip, with less per-call overhead
    return np.minimum(np.maximum(np.where(positive, interest + step, interest - step), -1.0), 1.0)


def positive_update_probability(interest: np.ndarray) -> np.ndarray:
    """Probability that a click moves the interest up: ``(I + 1) / 2``."""
    return (interest + 1.0) / 2.0


# -- catalog --------------------------------------------------------------------------

_TRASHY_TOPICS = (
    "rage bait",
    "celebrity gossip",
    "prank",
    "fail compilation",
    "conspiracy",
    "tabloid",
    "drama recap",
    "meme dump",
    "clickbait challenge",
    "reaction",
    "unboxing hype",
    "loud vlog",
    "mukbang",
    "gaming highlights",
)
_NUTRITIOUS_TOPICS = (
    "cooking",
    "travel",
    "news analysis",
    "science explainer",
    "history documentary",
    "university lecture",
)
_LOW_QUALITY_WORDS = ("low-effort", "cheap", "rushed", "shaky", "reposted")
_PLAIN_WORDS = ("new", "short", "weekly", "quick", "latest")
_HIGH_QUALITY_WORDS = ("in-depth", "carefully researched", "award-winning", "expert", "beautifully shot")


def topic_names(num_clusters: int) -> tuple[str, ...]:
    """Readable cluster names (trashiest first, as the quality means are ordered)."""
    if num_clusters == len(_TRASHY_TOPICS) + len(_NUTRITIOUS_TOPICS):
        return _TRASHY_TOPICS + _NUTRITIOUS_TOPICS
    return tuple(f"cluster {c:02d}" for c in range(num_clusters))


def video_texts(
    topic: np.ndarray, quality: np.ndarray, names: tuple[str, ...], rng: np.random.Generator
) -> list[str]:
    """Short titles ``"<adjective> <cluster> video"``; the adjective hints at quality, with noise."""
    noisy_quality = quality + rng.standard_normal(len(quality))
    band = np.digitize(noisy_quality, [-1.5, 1.5])  # 0 low, 1 plain, 2 high
    word_lists = (_LOW_QUALITY_WORDS, _PLAIN_WORDS, _HIGH_QUALITY_WORDS)
    word_index = rng.integers(0, len(_PLAIN_WORDS), size=len(quality))
    return [
        f"{word_lists[b][w].capitalize()} {names[t]} video"
        for b, w, t in zip(band.tolist(), word_index.tolist(), topic.tolist(), strict=True)
    ]


def sample_interest_evolution_catalog(config: InterestEvolutionConfig, rng: np.random.Generator) -> Catalog:
    """A catalog of ``config.num_items`` videos from RecSim's video distribution.

    Clusters are stratified (equally many videos per cluster), so uniform
    candidates from the catalog have RecSim's cluster distribution exactly.
    RecSim has no clickbait (``appeal`` is 0) and every cluster is equally
    popular in expectation under its user distribution (``popularity`` is 0.5).
    """
    cluster, quality, length = sample_videos(config, config.num_items, rng, stratified=True)
    names = topic_names(config.num_clusters)
    return Catalog(
        topic=cluster,
        topic_names=names,
        quality=quality.astype(np.float32),
        appeal=np.zeros(config.num_items, dtype=np.float32),
        length=length.astype(np.float32),
        popularity=np.full(config.num_items, 0.5, dtype=np.float32),
        texts=tuple(video_texts(cluster, quality, names, rng)),
    )


_MIN_CLICK_MASS = 1e-300

# -- user model -----------------------------------------------------------------------


@dataclass
class InterestEvolutionState:
    """Hidden state of B RecSim users. Never part of the observation."""

    interest: np.ndarray
    """(B, num_clusters) in [-1, 1]"""
    time_left: np.ndarray
    """(B,) minutes left in the session"""
    steps: np.ndarray
    """(B,) int: slates seen this session"""
    clicks: np.ndarray
    """(B,) int: clicks this session"""
    minutes_watched: np.ndarray
    """(B,) minutes watched this session (the return so far)"""


class InterestEvolutionUserModel:
    """RecSim interest_evolution users as an ``envs.core.UserModel`` (batched over B users).

    The proportional choice rule ``p_j ~ s_j - min_normalizer`` is expressed in
    the core's multinomial logit as utilities ``log(s_j - min_normalizer)``
    (no-click: ``log(no_click_mass - min_normalizer)``) and no position bias:
    softmax of logs is exactly the proportional rule, and the utilities keep the
    order of the affinities ``s_j = interest[cluster_j]`` that RecSim scores with.

    Visible context (3 numbers in [0, 1]): slates seen this session /
    ``context_steps``, the session's click rate, and minutes watched / (2 x the
    time budget). RecSim also shows the user's interests; longrec does not (they
    are in ``hidden_state``).
    """

    context_dim = 3
    context_steps = 400
    """slates at which the step-count context saturates"""

    def __init__(self, catalog: Catalog, config: InterestEvolutionConfig) -> None:
        if catalog.num_topics != config.num_clusters:
            raise ValueError(
                f"catalog has {catalog.num_topics} topics but config.num_clusters={config.num_clusters}"
            )
        self.catalog = catalog
        self.config = config
        self._quality = catalog.quality.astype(np.float64)
        # budget refund per minute watched: the quality part per item, the choice-score part per score
        self._quality_refund_rate = (
            config.budget_update_alpha * config.document_quality_factor * self._quality
        )
        self._score_refund_rate = config.budget_update_alpha * config.user_quality_factor
        self._length = catalog.length.astype(np.float64)
        self._log_no_click = np.full(1, np.log(config.no_click_mass - config.min_normalizer))
        self._offsets = np.zeros(0, dtype=np.int64)
        # per-item values as Python numbers, for the one-user transition
        self._cluster_list = catalog.topic.tolist()
        self._length_list = self._length.tolist()
        self._quality_refund_rate_list = self._quality_refund_rate.tolist()

    # -- user sampler -------------------------------------------------------------------
    def init_state(self, num_users: int, rng: np.random.Generator) -> InterestEvolutionState:
        state = InterestEvolutionState(
            interest=np.zeros((num_users, self.config.num_clusters)),
            time_left=np.zeros(num_users),
            steps=np.zeros(num_users, dtype=np.int64),
            clicks=np.zeros(num_users, dtype=np.int64),
            minutes_watched=np.zeros(num_users),
        )
        self.reset_users(state, np.ones(num_users, dtype=bool), rng)
        return state

    def reset_users(self, state: InterestEvolutionState, mask: np.ndarray, rng: np.random.Generator) -> None:
        """Replace the users in ``mask`` with freshly sampled ones (in place)."""
        idx = np.flatnonzero(mask)
        state.interest[idx] = sample_interests(self.config, len(idx), rng)
        state.time_left[idx] = self.config.time_budget
        state.steps[idx] = 0
        state.clicks[idx] = 0
        state.minutes_watched[idx] = 0.0

    # -- choice model inputs -------------------------------------------------------------
    def position_bias(self, slate_size: int) -> np.ndarray:
        return np.zeros(slate_size)

    def affinity(self, state: InterestEvolutionState, item_ids: np.ndarray) -> np.ndarray:
        """RecSim's document score ``interest . one_hot(cluster)`` of ``item_ids`` (B, M)."""
        clusters = self.catalog.topic.take(item_ids)
        if len(item_ids) > 1:  # flat index of (user, cluster); one user's row offset is 0
            clusters = self._row_offsets(len(item_ids))[:, None] + clusters
        return state.interest.take(clusters)

    def item_utilities(self, state: InterestEvolutionState, item_ids: np.ndarray) -> np.ndarray:
        if len(item_ids) == 1:  # one user: the same arithmetic on Python floats, then the same np.log
            interest, cluster, min_normalizer = state.interest, self._cluster_list, self.config.min_normalizer
            shifted = [
                max(interest.item(cluster[item]) - min_normalizer, _MIN_CLICK_MASS) for item in item_ids.tolist()[0]
            ]
            return np.log([shifted])
        shifted = self.affinity(state, item_ids) - self.config.min_normalizer
        # An interest of exactly -1 has zero click mass; the floor keeps log finite
        # (utility -690: probability ~1e-300) without an errstate context per call.
        return np.log(np.maximum(shifted, _MIN_CLICK_MASS))

    def no_click_utility(self, state: InterestEvolutionState) -> np.ndarray:
        return self._log_no_click.repeat(len(state.time_left))  # np.full, with less per-call overhead

    # -- response and state transition ---------------------------------------------------
    def transition(
        self,
        state: InterestEvolutionState,
        slate_item_ids: np.ndarray,
        clicked_item: np.ndarray,
        rng: np.random.Generator,
    ) -> Transition:
        config = self.config
        num_users = len(clicked_item)
        if num_users == 1:  # the same draws as the core's one-user step (scalar uniforms)
            return self.transition_one_user(state, slate_item_ids, clicked_item.item(), rng).as_batch()
        clicked = clicked_item >= 0
        item = np.maximum(clicked_item, 0)
        # flat index of (user, clicked cluster) into the (B, clusters) interest matrix
        flat = self._row_offsets(num_users) + self.catalog.topic[item]
        interest = state.interest.take(flat)
        length = self._length[item]

        watch_time = np.minimum(state.time_left, length) * clicked
        # A click costs the watch time and refunds budget_update_alpha * watch_time * received
        # utility, where received utility = user_quality_factor * (shifted choice score)
        # + document_quality_factor * quality; a slate without a click costs the step penalty.
        refund_rate = self._quality_refund_rate[item]
        if config.user_quality_factor:
            refund_rate = refund_rate + self._score_refund_rate * (interest - config.min_normalizer)
        new_time_left = state.time_left + np.where(
            clicked, watch_time * (refund_rate - 1.0), -config.step_penalty
        )
        state.time_left = new_time_left

        positive = rng.random(num_users) < positive_update_probability(interest)
        np.put(state.interest, flat, np.where(clicked, evolve_interest(interest, positive, config), interest))

        state.steps += 1
        state.clicks += clicked
        state.minutes_watched += watch_time
        session_ended = new_time_left <= 0.0
        return Transition(
            reward=watch_time,
            consumption=watch_time / length,
            session_ended=session_ended,
            returned=np.zeros(num_users, dtype=bool),
            terminated=session_ended.copy(),
            truncated=np.zeros(num_users, dtype=bool),
        )

    def transition_one_user(
        self,
        state: InterestEvolutionState,
        slate_item_ids: np.ndarray,
        clicked_item: int,
        rng: np.random.Generator,
    ) -> Transition:
        """Row 0 of ``transition`` at B = 1 as numpy scalars, on Python floats: the same arithmetic and draws.

        Numpy's per-call overhead dominates at B = 1 (~30 calls on size-1 arrays);
        ``test_one_user_fast_path_matches_the_batched_path`` checks the equality bit for bit.
        """
        config = self.config
        time_left = state.time_left.item()
        item = max(clicked_item, 0)
        cluster = self._cluster_list[item]
        interest = state.interest.item(cluster)
        length = self._length_list[item]
        # the batched path draws the interest coin for every user, clicked or not
        positive = rng.random() < positive_update_probability(interest)
        if clicked_item >= 0:
            watch_time = min(time_left, length)
            refund_rate = self._quality_refund_rate_list[item]
            if config.user_quality_factor:
                refund_rate = refund_rate + self._score_refund_rate * (interest - config.min_normalizer)
            time_left = time_left + watch_time * (refund_rate - 1.0)
            step = interest_step(interest, config)
            state.interest[0, cluster] = min(max(interest + step if positive else interest - step, -1.0), 1.0)
        else:
            watch_time = 0.0
            time_left = time_left - config.step_penalty
        # element-wise via Python numbers: cheaper than numpy scalar arithmetic (``+=`` on an element)
        state.time_left[0] = time_left
        state.steps[0] = state.steps.item() + 1
        state.clicks[0] = state.clicks.item() + (clicked_item >= 0)
        state.minutes_watched[0] = state.minutes_watched.item() + watch_time
        session_ended = np.True_ if time_left <= 0.0 else np.False_  # cheaper than np.bool_(...)
        return Transition(  # positional: cheaper than keywords
            np.float64(watch_time),  # reward
            np.float64(watch_time / length),  # consumption
            session_ended,
            np.False_,  # returned
            session_ended,  # terminated
            np.False_,  # truncated
        )

    def _row_offsets(self, num_users: int) -> np.ndarray:
        if len(self._offsets) != num_users:
            self._offsets = np.arange(num_users) * self.config.num_clusters
        return self._offsets

    # -- what the policy and the analyst may see -----------------------------------------
    def context(self, state: InterestEvolutionState) -> np.ndarray:
        if len(state.steps) == 1:  # one user: the same arithmetic on Python numbers, bit for bit
            steps, clicks, minutes = state.steps.item(), state.clicks.item(), state.minutes_watched.item()
            columns = (
                min(steps * (1.0 / self.context_steps), 1.0),
                clicks / max(steps, 1),
                min(minutes * (0.5 / self.config.time_budget), 1.0),
            )
            return np.array([columns], dtype=np.float32)
        context = np.empty((len(state.steps), self.context_dim), dtype=np.float32)
        context[:, 0] = np.minimum(state.steps * (1.0 / self.context_steps), 1.0)
        context[:, 1] = state.clicks / np.maximum(state.steps, 1)
        context[:, 2] = np.minimum(state.minutes_watched * (0.5 / self.config.time_budget), 1.0)
        return context

    def hidden_state(self, state: InterestEvolutionState) -> dict[str, np.ndarray]:
        """``interest`` and ``time_left``; RecSim users have no satisfaction or fatigue (zeros)."""
        num_users = len(state.time_left)
        return {
            "interest": state.interest.copy(),
            "satisfaction": np.zeros(num_users),
            "fatigue": np.zeros_like(state.interest),
            "time_left": state.time_left.copy(),
        }

    def sessions(self, state: InterestEvolutionState) -> np.ndarray:
        """Completed sessions: 1 once the budget has run out (the episode is one session)."""
        if len(state.time_left) == 1:  # one user: one array from a Python int, cheaper than two numpy calls
            return np.array([int(state.time_left.item() <= 0.0)])
        return (state.time_left <= 0.0).astype(np.int64)


# -- assembly ---------------------------------------------------------------------------


def interest_evolution(
    num_users: int = 1,
    num_candidates: int = 10,
    slate_size: int = 2,
    history_length: int = 20,
    catalog_seed: int = 0,
    duplicate_mode: str = "error",
    duplicate_penalty: float = 1.0,
    config: InterestEvolutionConfig | None = None,
    **overrides: Any,
) -> BatchedSimulator:
    """RecSim's interest_evolution (Ie et al. 2019), batched: one session per episode; reward is watch time.

    * The user cares about: videos of clusters they are interested in (click
      probability proportional to ``interest + 1``, no click to 2). Watching a
      cluster moves that interest up or down at random (up more often when it
      is already high). Quality does not change clicks, but high-quality videos
      refund session time, so the session lasts longer: the long-term lever.
    * A session starts with 200 minutes; a click costs the 4-minute watch
      (minus a refund of ``0.265 * 4 * quality``), an ignored slate 0.5 minutes.
      The episode ends when the budget is spent (no retention, no truncation).
    * Slate: K of C candidates drawn uniformly from a catalog of 10,000 videos
      over 20 clusters (14 "trashy", 6 "nutritious"); no position bias.
    * Keyword arguments: ``num_candidates`` (C, default 10) and ``slate_size``
      (K, default 2) as in RecSim, ``history_length``, ``catalog_seed``,
      ``duplicate_mode``, ``duplicate_penalty``, and any field of
      ``InterestEvolutionConfig`` (``num_items``, ``time_budget``, ...).
    * Validated against RecSim itself by ``benchmarks/recsim_fidelity.py``.

    Version history: v0 (initial release).
    """
    config = config or InterestEvolutionConfig()
    if overrides:
        valid = [field.name for field in dataclasses.fields(InterestEvolutionConfig)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown InterestEvolution argument(s) {unknown}; valid: num_candidates, slate_size, "
                f"history_length, catalog_seed, duplicate_mode, duplicate_penalty, config, {', '.join(valid)}"
            )
        config = dataclasses.replace(config, **overrides)
    for name, value in (("num_candidates", num_candidates), ("slate_size", slate_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name}={value!r} must be an integer")
    if num_candidates > config.num_items:
        raise ValueError(
            f"num_candidates={num_candidates} exceeds the catalog size num_items={config.num_items}"
        )
    session = SessionConfig(
        num_candidates=int(num_candidates),
        slate_size=int(slate_size),
        history_length=history_length,
        horizon_days=1,
        budget_mean=config.time_budget,
        budget_sd=0.0,
        browse_cost=max(config.step_penalty, 1e-6),
    )
    catalog = sample_interest_evolution_catalog(config, np.random.default_rng(catalog_seed))
    model = InterestEvolutionUserModel(catalog, config)
    return BatchedSimulator(model, session, num_users, duplicate_mode, duplicate_penalty)
