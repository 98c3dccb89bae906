"""The long-horizon user model: interests, satisfaction, fatigue, sessions and retention.

Structured like RecSim's user model (``recsim/user.py``: user state, user
sampler, response, state transition), extended to many sessions per episode
in the spirit of long-term engagement simulators such as KuaiSim's
retention model: a user's satisfaction decides whether they come back the
next day, so a policy that trades quality for clicks loses users.

All arrays have a leading batch axis of B users; nothing loops over users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.catalog import Catalog
from envs.config import SessionConfig, UserConfig
from envs.core import Transition

RESPONSE_KINDS = ("watch_time", "purchase")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class LongTermUserState:
    """Hidden state of B users. Never part of the observation."""

    interest: np.ndarray  # (B, T) in [-1, 1]
    satisfaction: np.ndarray  # (B,) in [0, 1]
    fatigue: np.ndarray  # (B, T) >= 0
    time_left: np.ndarray  # (B,) minutes left in the current session
    day: np.ndarray  # (B,) int: sessions completed so far (one per day)
    step_in_session: np.ndarray  # (B,) int
    clicks_in_session: np.ndarray  # (B,) int
    last_session_steps: np.ndarray  # (B,) int


class LongTermUserModel:
    """Users whose satisfaction, interests and fatigue evolve over many daily sessions.

    * Choice utility of item i: ``interest_weight * interest[topic_i] + appeal_weight * appeal_i
      - fatigue_weight * fatigue[topic_i]``; the no-click option has utility
      ``no_click_utility - satisfaction_click_weight * (satisfaction - 0.5)``.
    * A clicked item is consumed in fraction
      ``sigmoid(q * quality + a * (appeal - 0.5) + i * interest - fatigue + noise)``: hooks hold
      attention in the moment, so clickbait also wins *immediate* engagement. Reward is the
      engagement (watch time = fraction * length, or a purchase of value = price).
    * Satisfaction is a moving average of experience: a clicked item is worth
      ``sigmoid(e * quality + interest)`` minus the unmet promise ``max(appeal - sigmoid(e * quality), 0)``
      (clickbait); an ignored slate is worth ``no_click_experience``.
    * Interest drifts toward well-consumed topics and away from disappointing ones;
      fatigue grows with repetition of a topic and decays per step and per day.
    * A session ends when its time budget runs out (or early after an ignored slate).
      The user then returns the next day with probability
      ``sigmoid(return_slope * (satisfaction - return_threshold))``; otherwise they churn
      (``terminated``). After ``horizon_days`` sessions the episode is ``truncated``.
    """

    context_dim = 4

    def __init__(
        self,
        catalog: Catalog,
        user: UserConfig,
        session: SessionConfig,
        response_kind: str = "watch_time",
    ) -> None:
        if response_kind not in RESPONSE_KINDS:
            raise ValueError(f"response_kind={response_kind!r} is not supported; valid: {RESPONSE_KINDS}")
        self.catalog = catalog
        self.user = user
        self.session = session
        self.response_kind = response_kind

    # -- user sampler -----------------------------------------------------
    def init_state(self, num_users: int, rng: np.random.Generator) -> LongTermUserState:
        t = self.catalog.num_topics
        state = LongTermUserState(
            interest=np.zeros((num_users, t)),
            satisfaction=np.zeros(num_users),
            fatigue=np.zeros((num_users, t)),
            time_left=np.zeros(num_users),
            day=np.zeros(num_users, dtype=np.int64),
            step_in_session=np.zeros(num_users, dtype=np.int64),
            clicks_in_session=np.zeros(num_users, dtype=np.int64),
            last_session_steps=np.zeros(num_users, dtype=np.int64),
        )
        self.reset_users(state, np.ones(num_users, dtype=bool), rng)
        return state

    def reset_users(self, state: LongTermUserState, mask: np.ndarray, rng: np.random.Generator) -> None:
        """Replace the users in ``mask`` with freshly sampled ones (in place)."""
        idx = np.flatnonzero(mask)
        n, t = len(idx), self.catalog.num_topics
        u = self.user
        state.interest[idx] = np.tanh(u.interest_scale * rng.standard_normal((n, t)))
        state.satisfaction[idx] = np.clip(
            u.initial_satisfaction + u.initial_satisfaction_sd * rng.standard_normal(n), 0.0, 1.0
        )
        state.fatigue[idx] = 0.0
        state.time_left[idx] = self._draw_budget(n, rng)
        state.day[idx] = 0
        state.step_in_session[idx] = 0
        state.clicks_in_session[idx] = 0
        state.last_session_steps[idx] = 0

    def _draw_budget(self, n: int, rng: np.random.Generator) -> np.ndarray:
        s = self.session
        return np.maximum(s.budget_mean + s.budget_sd * rng.standard_normal(n), s.browse_cost)

    # -- choice model inputs ----------------------------------------------
    def position_bias(self, slate_size: int) -> np.ndarray:
        return -self.user.position_decay * np.arange(slate_size)

    def item_utilities(self, state: LongTermUserState, item_ids: np.ndarray) -> np.ndarray:
        """MNL utility (without position bias) of ``item_ids`` (B, M) for each user."""
        u = self.user
        topics = self.catalog.topic[item_ids]
        interest = np.take_along_axis(state.interest, topics, axis=1)
        fatigue = np.take_along_axis(state.fatigue, topics, axis=1)
        return (
            u.interest_weight * interest
            + u.appeal_weight * self.catalog.appeal[item_ids]
            - u.fatigue_weight * fatigue
        )

    def no_click_utility(self, state: LongTermUserState) -> np.ndarray:
        u = self.user
        return u.no_click_utility - u.satisfaction_click_weight * (state.satisfaction - 0.5)

    def consumption_fraction(
        self, quality: np.ndarray, appeal: np.ndarray, interest: np.ndarray, fatigue: np.ndarray, noise: np.ndarray | float = 0.0
    ) -> np.ndarray:
        """Fraction of a clicked item consumed (watched / bought / read), before the click mask.

        ``noise`` is the already-scaled noise term (0 for the expectation the oracle uses).
        """
        u = self.user
        return sigmoid(
            u.consumption_bias
            + u.consumption_quality_weight * quality
            + u.consumption_appeal_weight * (appeal - 0.5)
            + u.consumption_interest_weight * interest
            - fatigue
            + noise
        )

    def click_experience(self, quality: np.ndarray, appeal: np.ndarray, interest: np.ndarray) -> np.ndarray:
        """What a clicked item was worth to the user, minus the promise its appeal made and did not keep.

        Satisfaction tracks this experience (clickbait: appeal above the item's worth is penalised).
        """
        u = self.user
        worth = sigmoid(u.experience_quality_weight * quality)
        return sigmoid(u.experience_quality_weight * quality + interest) - u.clickbait_penalty * np.maximum(
            appeal - worth, 0.0
        )

    # -- response and state transition ---------------------------------------
    def transition(
        self,
        state: LongTermUserState,
        slate_item_ids: np.ndarray,
        clicked_item: np.ndarray,
        rng: np.random.Generator,
    ) -> Transition:
        u, s, cat = self.user, self.session, self.catalog
        num_users = len(clicked_item)
        rows = np.arange(num_users)
        clicked = clicked_item >= 0
        item = np.where(clicked, clicked_item, 0)
        topic = cat.topic[item]
        interest = state.interest[rows, topic]
        fatigue = state.fatigue[rows, topic]
        quality, appeal = cat.quality[item], cat.appeal[item]
        noise = rng.standard_normal(num_users)
        fraction = self.consumption_fraction(quality, appeal, interest, fatigue, u.consumption_noise * noise)
        consumption = np.where(clicked, fraction, 0.0)
        minutes = consumption * cat.length[item]
        if self.response_kind == "watch_time":
            reward = minutes
        else:  # purchase: buy with probability = consumption; value = price
            reward = np.where(rng.random(num_users) < consumption, cat.length[item], 0.0)

        # Satisfaction tracks recent experience: what the item was worth, minus the
        # promise the thumbnail/headline made and the item did not keep.
        experience = np.where(clicked, self.click_experience(quality, appeal, interest), u.no_click_experience)
        state.satisfaction = np.clip(
            state.satisfaction + u.satisfaction_rate * (experience - state.satisfaction), 0.0, 1.0
        )
        drift = u.interest_drift * 2.0 * (consumption - 0.5) * (1.0 - np.abs(interest))
        state.interest[rows, topic] = np.clip(interest + np.where(clicked, drift, 0.0), -1.0, 1.0)
        state.fatigue *= u.fatigue_step_decay
        state.fatigue[rows, topic] += u.fatigue_increment * consumption

        state.time_left -= s.browse_cost + s.time_per_length * minutes
        state.step_in_session += 1
        state.clicks_in_session += clicked
        leaves_early = ~clicked & (rng.random(num_users) < u.leave_after_no_click)
        session_ended = (
            (state.time_left <= 0) | leaves_early | (state.step_in_session >= s.max_steps_per_session)
        )
        return_draw = rng.random(num_users)
        budget = self._draw_budget(num_users, rng)
        p_return = sigmoid(u.return_slope * (state.satisfaction - u.return_threshold))
        returned = session_ended & (return_draw < p_return)
        terminated = session_ended & ~returned
        state.day += session_ended
        truncated = returned & (state.day >= s.horizon_days)

        new_session = returned & ~truncated
        state.last_session_steps = np.where(session_ended, state.step_in_session, state.last_session_steps)
        state.time_left = np.where(new_session, budget, state.time_left)
        state.fatigue[new_session] *= u.fatigue_day_decay
        state.step_in_session[session_ended] = 0
        state.clicks_in_session[session_ended] = 0
        return Transition(reward, consumption, session_ended, returned, terminated, truncated)

    # -- what the policy and the analyst may see -------------------------
    def context(self, state: LongTermUserState) -> np.ndarray:
        s = self.session
        steps = np.maximum(state.step_in_session, 1)
        return np.stack(
            [
                np.minimum(state.day / s.horizon_days, 1.0),
                np.minimum(state.step_in_session / s.max_steps_per_session, 1.0),
                np.minimum(state.clicks_in_session / steps, 1.0),
                np.minimum(state.last_session_steps / s.max_steps_per_session, 1.0),
            ],
            axis=1,
        ).astype(np.float32)

    def hidden_state(self, state: LongTermUserState) -> dict[str, np.ndarray]:
        return {
            "interest": state.interest.copy(),
            "satisfaction": state.satisfaction.copy(),
            "fatigue": state.fatigue.copy(),
            "time_left": state.time_left.copy(),
        }

    def sessions(self, state: LongTermUserState) -> np.ndarray:
        """Completed sessions (days) of each user so far."""
        return state.day.copy()
