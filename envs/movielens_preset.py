"""``longrec/MovieLens-v0``: the long-horizon user model on the real MovieLens catalog.

The world is built from a MovieLens folder (``envs.movielens``; default: the
project's copy of ml-latest-small, F. M. Harper and J. A. Konstan, ACM TiiS
2015) instead of a domain spec file, and plugged into the same long-horizon
user model as the other presets (``envs.user.LongTermUserModel``: MNL choice
with position bias, satisfaction, interest drift, fatigue, sessions and
returns; RecSim's user / document / choice separation):

* **catalog**: every movie with its text (title, year, genres, top tags);
  ``topic`` = the item's most specific genre (its genre rarest in the catalog);
  items without genres get the extra topic ``"(no genres listed)"``;
* **hidden quality**: the Bayesian-shrunk mean rating
  ``(sum of ratings + m * global mean) / (count + m)`` (``m = quality_shrinkage``),
  standardised over the catalog;
* **hidden appeal**: ``sigmoid(z(log(1 + ratings count)))``: well-known movies pull clicks;
  **visible popularity**: ``log(1 + count) / max log(1 + count)``;
* **users**: each simulated user starts from the genre profile of a real user
  drawn uniformly: ``interest[g] = tanh(interest_scale * log((share_u[g] + eps) / (share[g] + eps)))``
  with ``share_u`` the user's and ``share`` all ratings' genre distribution
  (each rating spreads one unit over its movie's genres);
* **choice utility** uses the mean interest over *all* of a movie's genres
  (multi-genre items), fatigue and drift act on its primary topic, as in the
  other presets;
* **reward** is watch time in hours: MovieLens has no runtimes, so every movie
  lasts ``movie_length`` (2) hours; a session is an evening with a budget of
  about 4 hours, 0.1 hours per browsed slate.

Calibration (``genre_calibration``): under the popularity policy, the genre
distribution of simulated consumption is compared with the real ratings'
genre distribution by the Jensen-Shannon divergence (base 2, in [0, 1]).

Arguments: ``data_path`` (a MovieLens folder; default ``$LONGREC_MOVIELENS`` or the
project copy), ``quality_shrinkage``, ``interest_scale`` (a user field), ``movie_length``,
any ``SessionConfig`` / ``UserConfig`` field by name (or ``session={...}``, ``user={...}``),
``duplicate_mode``, ``duplicate_penalty``. Version history: v0 (initial release).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.catalog import Catalog
from envs.config import SessionConfig, UserConfig, from_mapping
from envs.core import BatchedSimulator
from envs.movielens import MovieLensData, load_movielens, resolve_data_path
from envs.registration import register_preset
from envs.user import LongTermUserModel, LongTermUserState

__all__ = [
    "ENV_ID",
    "MovieLensUserModel",
    "MovieLensWorld",
    "build_world",
    "genre_calibration",
    "genre_distribution",
    "jensen_shannon",
    "movielens",
]

ENV_ID = "longrec/MovieLens-v0"
NO_GENRE_TOPIC = "(no genres listed)"

SESSION_DEFAULTS: dict[str, Any] = {
    "num_candidates": 20,
    "slate_size": 5,
    "history_length": 20,
    "horizon_days": 30,
    "budget_mean": 4.0,  # hours in an evening
    "budget_sd": 1.0,
    "browse_cost": 0.1,  # six minutes to look at a slate
    "time_per_length": 1.0,
    "max_steps_per_session": 40,
}
USER_DEFAULTS: dict[str, Any] = {}


@dataclass(frozen=True, eq=False)
class MovieLensWorld:
    """The data-derived parts of the preset (shared by every environment of one folder)."""

    catalog: Catalog
    genre_weights: np.ndarray
    """(N, T) float: each item's genres (plus the no-genre topic), rows summing to 1."""
    user_interests: np.ndarray
    """(U, T) float in [-1, 1]: initial interests of the real users' profiles."""
    real_genre_distribution: np.ndarray
    """(T,) genre distribution of all real ratings."""
    interest_scale: float


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def genre_distribution(items: np.ndarray, genre_weights: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Genre distribution of a bag of items (each counted ``weights`` times, spread over its genres)."""
    items = np.asarray(items, dtype=np.int64)
    w = np.ones(items.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    mass = np.bincount(items, weights=w, minlength=genre_weights.shape[0]) @ genre_weights
    total = mass.sum()
    if total <= 0:
        raise ValueError("no consumption mass: the genre distribution is undefined")
    return mass / total


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint) of two distributions."""
    p = np.asarray(p, dtype=np.float64) / np.sum(p)
    q = np.asarray(q, dtype=np.float64) / np.sum(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def build_world(
    data: MovieLensData,
    *,
    quality_shrinkage: float = 10.0,
    interest_scale: float = 1.0,
    movie_length: float = 2.0,
    eps: float = 1e-3,
) -> MovieLensWorld:
    """Catalog, genre weights and real-user interest profiles from loaded MovieLens data."""
    if quality_shrinkage < 0:
        raise ValueError(f"quality_shrinkage must be >= 0, got {quality_shrinkage}")
    if interest_scale < 0:
        raise ValueError(f"interest_scale must be >= 0, got {interest_scale}")
    if movie_length <= 0:
        raise ValueError(f"movie_length must be > 0, got {movie_length}")
    n = data.num_items
    genres = data.genre_matrix.astype(np.float64)
    no_genre = genres.sum(axis=1) == 0
    topic_names = tuple(data.genre_names)
    if no_genre.any() or not topic_names:
        genres = np.concatenate([genres, no_genre[:, None].astype(np.float64)], axis=1)
        topic_names = (*topic_names, NO_GENRE_TOPIC)
    genre_weights = genres / genres.sum(axis=1, keepdims=True)
    # Most specific genre: the item's genre that is rarest in the catalog (ties: first by name).
    rarity = np.where(genres > 0, genres.sum(axis=0)[None, :], np.inf)
    topic = np.argmin(rarity, axis=1).astype(np.int64)

    counts = data.item_counts().astype(np.float64)
    rating_sum = np.bincount(data.item, weights=data.rating.astype(np.float64), minlength=n)
    global_mean = float(data.rating.mean())
    shrunk = (rating_sum + quality_shrinkage * global_mean) / np.maximum(counts + quality_shrinkage, 1e-12)
    quality = _standardise(shrunk)
    log_count = np.log1p(counts)
    appeal = 1.0 / (1.0 + np.exp(-_standardise(log_count)))
    popularity = log_count / max(float(log_count.max()), 1e-12)

    real = genre_distribution(data.item, genre_weights)
    user_of = data.interaction_user()
    per_user = np.zeros((data.num_users, genre_weights.shape[1]))
    np.add.at(per_user, user_of, genre_weights[data.item])
    share = per_user / per_user.sum(axis=1, keepdims=True)
    interests = np.tanh(interest_scale * np.log((share + eps) / (real[None, :] + eps)))

    catalog = Catalog(
        topic=topic,
        topic_names=topic_names,
        quality=quality.astype(np.float32),
        appeal=appeal.astype(np.float32),
        length=np.full(n, movie_length, dtype=np.float32),
        popularity=popularity.astype(np.float32),
        texts=data.texts,
    )
    return MovieLensWorld(
        catalog=catalog,
        genre_weights=genre_weights,
        user_interests=interests,
        real_genre_distribution=real,
        interest_scale=interest_scale,
    )


@functools.lru_cache(maxsize=4)
def _cached_world(path: str, quality_shrinkage: float, interest_scale: float, movie_length: float) -> MovieLensWorld:
    return build_world(
        load_movielens(path),
        quality_shrinkage=quality_shrinkage,
        interest_scale=interest_scale,
        movie_length=movie_length,
    )


class MovieLensUserModel(LongTermUserModel):
    """``LongTermUserModel`` whose users start from real users' genre profiles and judge a
    movie by the mean interest over all its genres."""

    def __init__(self, world: MovieLensWorld, user: UserConfig, session: SessionConfig) -> None:
        super().__init__(world.catalog, user, session, response_kind="watch_time")
        self.world = world

    def reset_users(self, state: LongTermUserState, mask: np.ndarray, rng: np.random.Generator) -> None:
        super().reset_users(state, mask, rng)
        idx = np.flatnonzero(mask)
        profiles = rng.integers(0, self.world.user_interests.shape[0], size=idx.shape[0])
        state.interest[idx] = self.world.user_interests[profiles]

    def item_utilities(self, state: LongTermUserState, item_ids: np.ndarray) -> np.ndarray:
        u = self.user
        weights = self.world.genre_weights[item_ids]  # (B, M, T)
        interest = np.einsum("bmt,bt->bm", weights, state.interest)
        fatigue = np.take_along_axis(state.fatigue, self.catalog.topic[item_ids], axis=1)
        return u.interest_weight * interest + u.appeal_weight * self.catalog.appeal[item_ids] - u.fatigue_weight * fatigue


def _split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    session, user = dict(SESSION_DEFAULTS), dict(USER_DEFAULTS)
    session_fields = {f.name for f in dataclasses.fields(SessionConfig)}
    user_fields = {f.name for f in dataclasses.fields(UserConfig)}
    for key, value in overrides.items():
        if key == "session" and isinstance(value, dict):
            session.update(value)
        elif key == "user" and isinstance(value, dict):
            user.update(value)
        elif key in session_fields:
            session[key] = value
        elif key in user_fields:
            user[key] = value
        else:
            valid = sorted(
                [*session_fields, *user_fields, "session", "user", "data_path", "quality_shrinkage", "movie_length",
                 "duplicate_mode", "duplicate_penalty"]
            )
            raise ValueError(f"unknown MovieLens-v0 option {key!r}; valid options: {', '.join(valid)}")
    return session, user


def movielens(
    num_users: int = 1,
    data_path: str | os.PathLike[str] | None = None,
    quality_shrinkage: float = 10.0,
    movie_length: float = 2.0,
    duplicate_mode: str = "error",
    duplicate_penalty: float = 1.0,
    **overrides: Any,
) -> BatchedSimulator:
    """MovieLens: the real movie catalog (texts, genres) with users drawn from real genre profiles.

    * The user cares about: the genres of the real user they were drawn from (interests
      drift toward what they watched to the end), quality (the shrunk mean rating: good
      movies are watched to the end and raise satisfaction), variety (a genre repeated
      builds fatigue). Well-known movies (appeal from popularity) pull clicks.
    * A session is an evening (~4 hours) that ends when the time is spent or early
      after an ignored slate; each movie lasts 2 hours.
    * A user returns the next day with a probability that rises with satisfaction;
      otherwise they churn. An episode is up to 30 days.
    * Slate: 5 of 20 candidates drawn from all 9,742 movies of ml-latest-small.
    """
    session_values, user_values = _split_overrides(overrides)
    interest_scale = float(user_values.get("interest_scale", 1.0))
    session = from_mapping(SessionConfig, session_values, "session")
    user = from_mapping(UserConfig, user_values, "user")
    path = str(Path(resolve_data_path(data_path)).resolve())
    world = _cached_world(path, float(quality_shrinkage), interest_scale, float(movie_length))
    model = MovieLensUserModel(world, user, session)
    return BatchedSimulator(model, session, num_users, duplicate_mode, duplicate_penalty)


def genre_calibration(
    num_users: int = 512,
    num_steps: int = 200,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the popularity policy on MovieLens-v0 and compare consumed genres with the real ratings.

    Consumption mass = watched fraction of each clicked movie, spread over its genres.
    Returns ``{"jsd": ..., "clicks": ..., "simulated": {genre: share}, "real": {genre: share}}``.
    """
    core = movielens(num_users=num_users, **kwargs)
    model = core.user_model
    assert isinstance(model, MovieLensUserModel)
    obs = core.reset(seed=seed)
    items, mass = [], []
    k = core.slate_size
    popularity = core.catalog.popularity
    for _ in range(num_steps):
        scores = popularity[obs["candidate_item_ids"]]
        slates = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        result = core.step(slates)
        clicked = result.info["clicked_item_id"] >= 0
        items.append(result.info["clicked_item_id"][clicked])
        mass.append(result.info["consumption"][clicked])
        obs = result.observation
    all_items = np.concatenate(items)
    simulated = genre_distribution(all_items, model.world.genre_weights, np.concatenate(mass))
    real = model.world.real_genre_distribution
    names = core.catalog.topic_names
    return {
        "jsd": jensen_shannon(simulated, real),
        "clicks": int(all_items.size),
        "simulated": {n: float(v) for n, v in zip(names, simulated, strict=True)},
        "real": {n: float(v) for n, v in zip(names, real, strict=True)},
    }


register_preset(ENV_ID, movielens)
