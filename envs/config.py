"""Typed configuration of the simulator: catalog, session and user dynamics.

Every preset is one of these triples read from a domain spec file
(``envs/domains/<name>.yaml``), so adding a domain is a data file, not code.
Values are validated eagerly: a bad value raises ``ValueError`` naming the
field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def _check_range(owner: str, name: str, value: float, low: float, high: float = math.inf) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{owner}.{name}={value!r} is out of range; allowed: [{low}, {high}]")


def from_mapping(cls: type[T], values: dict[str, Any] | None, owner: str) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    values = dict(values or {})
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in values:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"unknown key {owner}.{key}{suggestion}; valid keys: {', '.join(valid)}")
    return cls(**values)


@dataclass(frozen=True)
class CatalogConfig:
    """How the item catalog is sampled."""

    num_items: int = 2000
    """number of items N in the catalog"""
    quality_appeal_coupling: float = -1.0
    """appeal = sigmoid(coupling * quality + noise): negative makes clickbait low quality"""
    appeal_noise: float = 1.0
    """standard deviation of the noise in the appeal logit"""
    length_log_mean: float = 1.6
    """log-normal item length (minutes / price units): mean of the log"""
    length_log_sd: float = 0.5
    """log-normal item length: standard deviation of the log"""
    max_length: float = 30.0
    """lengths are clipped to [0.5, max_length]"""
    topic_skew: float = 1.0
    """Zipf exponent of how items spread over topics (0 = uniform)"""

    def __post_init__(self) -> None:
        if self.num_items < 2:
            raise ValueError(f"catalog.num_items={self.num_items!r} must be >= 2")
        _check_range("catalog", "appeal_noise", self.appeal_noise, 0.0)
        _check_range("catalog", "length_log_sd", self.length_log_sd, 0.0)
        _check_range("catalog", "max_length", self.max_length, 0.5)
        _check_range("catalog", "topic_skew", self.topic_skew, 0.0)


@dataclass(frozen=True)
class SessionConfig:
    """Shape of the interaction: slates, history, horizon and time budget."""

    num_candidates: int = 20
    """C: candidates offered to the policy at each step"""
    slate_size: int = 5
    """K: items the policy shows per step (K <= C)"""
    history_length: int = 20
    """H: shown items remembered in the observation"""
    horizon_days: int = 30
    """episode length cap: one user's life is at most this many daily sessions"""
    budget_mean: float = 40.0
    """mean time budget of a session (minutes)"""
    budget_sd: float = 10.0
    """standard deviation of the session time budget"""
    browse_cost: float = 1.0
    """time a user spends looking at a slate, whether or not they click"""
    time_per_length: float = 1.0
    """session time spent per unit of consumed length (1 for minutes of video; small for prices)"""
    max_steps_per_session: int = 40
    """safety cap on slates per session (normalises the step-in-session context)"""
    # cold start inside one catalog (0 = off: every item can be a candidate)
    new_item_share: float = 0.0
    """share of the catalog's items that are new (a fixed, seeded set); with new_candidate_share 0 never a candidate"""
    new_candidate_share: float = 0.0
    """share of each step's candidates drawn from the new items, from day 1 of a life on (day 0 has none)"""
    new_item_seed: int = 0
    """which items are new (the same set in every env of a catalog with this share and seed)"""

    def __post_init__(self) -> None:
        if self.num_candidates < 1:
            raise ValueError(f"session.num_candidates={self.num_candidates!r} must be >= 1")
        if not (1 <= self.slate_size <= self.num_candidates):
            raise ValueError(
                f"session.slate_size={self.slate_size!r} must be in [1, num_candidates={self.num_candidates}]"
            )
        if self.history_length < 1:
            raise ValueError(f"session.history_length={self.history_length!r} must be >= 1")
        if self.horizon_days < 1:
            raise ValueError(f"session.horizon_days={self.horizon_days!r} must be >= 1")
        _check_range("session", "budget_mean", self.budget_mean, 1e-6)
        _check_range("session", "budget_sd", self.budget_sd, 0.0)
        _check_range("session", "browse_cost", self.browse_cost, 1e-6)
        _check_range("session", "time_per_length", self.time_per_length, 0.0)
        if self.max_steps_per_session < 1:
            raise ValueError(f"session.max_steps_per_session={self.max_steps_per_session!r} must be >= 1")
        if not (0.0 <= self.new_item_share < 1.0):
            raise ValueError(f"session.new_item_share={self.new_item_share!r} is out of range; allowed: [0, 1)")
        _check_range("session", "new_candidate_share", self.new_candidate_share, 0.0, 1.0)
        if self.new_candidate_share > 0.0:
            if self.new_item_share == 0.0:
                raise ValueError(
                    f"session.new_candidate_share={self.new_candidate_share!r} needs new_item_share in (0, 1); "
                    "it is 0, so no item is new"
                )
            if self.new_candidates_per_step == 0:
                raise ValueError(
                    f"session.new_candidate_share={self.new_candidate_share!r} gives 0 of num_candidates="
                    f"{self.num_candidates} candidates; allowed: 0 or >= {0.5 / self.num_candidates:g}"
                )

    @property
    def new_candidates_per_step(self) -> int:
        """New items among the C candidates of a step from day 1 on: new_candidate_share * C, rounded half up."""
        return math.floor(self.new_candidate_share * self.num_candidates + 0.5)


@dataclass(frozen=True)
class UserConfig:
    """Parameters of the long-horizon user model (see ``envs.user``)."""

    interest_scale: float = 1.0
    """spread of initial topic interests (interest = tanh(scale * normal))"""
    initial_satisfaction: float = 0.6
    """mean initial satisfaction in [0, 1]"""
    initial_satisfaction_sd: float = 0.1
    """spread of initial satisfaction"""
    # choice model (multinomial logit)
    interest_weight: float = 2.0
    """utility weight of the user's interest in the item's topic"""
    appeal_weight: float = 2.0
    """utility weight of item appeal (clickbait pulls clicks)"""
    fatigue_weight: float = 1.5
    """utility penalty per unit of topic fatigue"""
    no_click_utility: float = 2.0
    """utility of not clicking at all, at satisfaction 0.5"""
    satisfaction_click_weight: float = 1.0
    """satisfied users click more: no-click utility falls by this times (satisfaction - 0.5)"""
    position_decay: float = 0.3
    """position bias: utility of slate position k is lowered by position_decay * k"""
    # consumption
    consumption_bias: float = 0.0
    """offset of the watch fraction / purchase probability logit"""
    consumption_quality_weight: float = 1.0
    """watch fraction logit weight of hidden quality"""
    consumption_appeal_weight: float = 2.0
    """watch fraction logit weight of appeal - 0.5 (hooks hold attention in the moment)"""
    consumption_interest_weight: float = 1.0
    """watch fraction logit weight of interest"""
    consumption_noise: float = 0.5
    """noise of the watch fraction logit"""
    # satisfaction dynamics
    satisfaction_rate: float = 0.05
    """satisfaction moves this fraction of the way toward each step's experience"""
    experience_quality_weight: float = 2.0
    """experience of a consumed item = sigmoid(weight * quality + interest) - clickbait term"""
    clickbait_penalty: float = 0.5
    """experience lost per unit of unmet promise: max(appeal - sigmoid(weight * quality), 0)"""
    no_click_experience: float = 0.4
    """experience of a slate that gets no click (irrelevant recommendations)"""
    # interest drift and fatigue
    interest_drift: float = 0.05
    """interest in a consumed topic moves by drift * (consumption - 0.5)"""
    fatigue_increment: float = 0.3
    """topic fatigue added per consumed item (times consumption)"""
    fatigue_step_decay: float = 0.9
    """fatigue multiplier per step"""
    fatigue_day_decay: float = 0.3
    """fatigue multiplier between sessions"""
    # sessions and retention
    leave_after_no_click: float = 0.15
    """probability the session ends early after a slate without a click"""
    return_slope: float = 10.0
    """return probability = sigmoid(slope * (satisfaction - threshold))"""
    return_threshold: float = 0.2
    """satisfaction at which a user returns with probability 0.5"""

    def __post_init__(self) -> None:
        _check_range("user", "initial_satisfaction", self.initial_satisfaction, 0.0, 1.0)
        _check_range("user", "initial_satisfaction_sd", self.initial_satisfaction_sd, 0.0)
        _check_range("user", "interest_scale", self.interest_scale, 0.0)
        _check_range("user", "consumption_noise", self.consumption_noise, 0.0)
        _check_range("user", "satisfaction_rate", self.satisfaction_rate, 0.0, 1.0)
        _check_range("user", "no_click_experience", self.no_click_experience, 0.0, 1.0)
        _check_range("user", "fatigue_step_decay", self.fatigue_step_decay, 0.0, 1.0)
        _check_range("user", "fatigue_day_decay", self.fatigue_day_decay, 0.0, 1.0)
        _check_range("user", "leave_after_no_click", self.leave_after_no_click, 0.0, 1.0)
        _check_range("user", "return_threshold", self.return_threshold, 0.0, 1.0)
        _check_range("user", "position_decay", self.position_decay, 0.0)
