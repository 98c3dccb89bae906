"""The built-in long-horizon presets. Each function's docstring is its spec.

All presets share the long-horizon user model (``envs.user``); they differ by
their domain file (``envs/domains/<name>.yaml``): topics and texts, catalog
statistics, session shape and dynamics parameters. Keyword arguments override
any catalog / session / user field by name (``num_candidates=10``,
``num_items=500``, ``user={"clickbait_penalty": 0.2}``), plus ``catalog_seed``
(which world; default 0) and ``duplicate_mode`` (``"error"`` or ``"penalty"``).
Cold start (off by default): ``new_item_share=0.2`` holds a seeded share of the
items out of the candidates (the training env); adding ``new_candidate_share=0.1``
makes that share of each step's candidates new items from day 1 of a life on
(the evaluation env). See ``envs.core``.

Version history: v0 (initial release).
"""

from __future__ import annotations

from typing import Any

from envs.core import BatchedSimulator
from envs.domain import build_catalog, load_domain
from envs.user import LongTermUserModel


def build_domain_simulator(
    domain: str,
    num_users: int = 1,
    catalog_seed: int = 0,
    duplicate_mode: str = "error",
    duplicate_penalty: float = 1.0,
    **overrides: Any,
) -> BatchedSimulator:
    """A ``BatchedSimulator`` of ``num_users`` users of the given domain file."""
    spec = load_domain(domain, **overrides)
    catalog = build_catalog(spec, seed=catalog_seed)
    model = LongTermUserModel(catalog, spec.user, spec.session, response_kind=spec.response)
    return BatchedSimulator(model, spec.session, num_users, duplicate_mode, duplicate_penalty)


def video(num_users: int = 1, **kwargs: Any) -> BatchedSimulator:
    """Video platform: users watch videos; reward is watch time (minutes).

    * The user cares about: topics they like (interests drift toward what they
      watched to the end), quality (a well-made video is watched longer and
      raises satisfaction), variety (watching one topic again and again builds
      fatigue). Clickbait thumbnails pull clicks but are abandoned early and
      cost trust.
    * A session ends when the evening's time budget (~40 min) is spent, or
      early after an ignored slate.
    * A user comes back the next day with a probability that rises with
      satisfaction; otherwise they churn. An episode is up to 30 days.
    * Slate: 5 of 20 candidates; catalog 2,000 videos over 12 topics.
    """
    return build_domain_simulator("video", num_users, **kwargs)


def ecommerce(num_users: int = 1, **kwargs: Any) -> BatchedSimulator:
    """E-commerce store: users browse products; reward is purchase value.

    * The user cares about: products matching their needs (interests), quality
      (a good product is bought and builds trust), not being baited by flashy
      listings that disappoint.
    * A session ends when the shopping time budget is spent or after an
      ignored page of results.
    * A user returns to the store on a later day with a probability that rises
      with satisfaction (trust); otherwise they churn. Up to 30 days.
    * Slate: 6 of 30 candidates; the reward is the price of what is bought.
    """
    return build_domain_simulator("ecommerce", num_users, **kwargs)


def news(num_users: int = 1, **kwargs: Any) -> BatchedSimulator:
    """News feed: users read articles; reward is reading time (dwell).

    * The user cares about: sections they follow, substance over sensational
      headlines (sensational headlines are clicked and quickly abandoned),
      fresh topics (reading the same section over and over tires quickly).
    * A session is a short daily visit (~15 min) that ends when that time is
      spent or after an ignored feed.
    * A reader returns the next day with a probability that rises with
      satisfaction; otherwise they churn. Up to 30 days.
    * Slate: 8 of 30 candidates.
    """
    return build_domain_simulator("news", num_users, **kwargs)


def music(num_users: int = 1, **kwargs: Any) -> BatchedSimulator:
    """Music streaming: users play tracks; reward is listening time.

    * The user cares about: genres they like (strong, slowly drifting taste),
      well-crafted tracks (listened to the end), variety (a genre repeated
      builds fatigue fast). Hyped tracks are skipped quickly when they are poor.
    * A session is a listening session that ends when its time budget is spent
      or after an ignored recommendation list.
    * A listener returns the next day with a probability that rises with
      satisfaction; otherwise they churn. Up to 30 days.
    * Slate: 4 of 15 candidates.
    """
    return build_domain_simulator("music", num_users, **kwargs)


def travel(num_users: int = 1, **kwargs: Any) -> BatchedSimulator:
    """Travel booking: users plan trips over many sessions; reward is the price of a booking.

    * The user cares about: destinations they dream of (stable interests) and
      trips that keep their promise (hidden quality). A "too good to be true"
      deal (sensational wording, low quality) pulls clicks and tempts a booking,
      then disappoints and costs trust.
    * A session is a short planning visit (~20 min) that ends when that time is
      spent or after an ignored page. Bookings are rare (under 1% of clicks):
      a well-served user books about two trips in 30 days, after a week or more
      of browsing.
    * A user returns the next day with a probability that rises with
      satisfaction; otherwise they churn. Up to 30 days.
    * Slate: 6 of 30 candidates; catalog 3,000 packages over 12 trip types,
      prices log-normal (median ~820).
    """
    return build_domain_simulator("travel", num_users, **kwargs)
