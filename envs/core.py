"""The batched simulator core: B users, one numpy array per quantity.

RecSim (Ie et al. 2019) assembles an environment from a document sampler, a
user model and a choice model and steps one user at a time. Here the same
separation holds, but one ``BatchedSimulator`` steps all B users at once and
every view (``SingleUserEnv``, ``BatchedVectorEnv``, ``SB3VecEnv``) is a thin
wrapper over it, so the three give identical trajectories for the same seed.

Randomness comes only from ``self.np_random``, created in ``reset(seed=...)``,
through ``self.rng`` (``envs.block_random.BlockRandom``: uniforms and candidate
ids are drawn from it in blocks, which a one-user step would otherwise spend a
fifth of its time on).

Cold start inside one catalog (``SessionConfig.new_item_share`` /
``new_candidate_share``, off by default): a fixed, seeded share of the items is
new (``BatchedSimulator.is_new_item``). They are never candidates unless
``new_candidate_share > 0``; then, from day 1 of a user's life on, that share
of each step's candidates is drawn from them (at random positions).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from envs.block_random import BlockRandom
from envs.catalog import Catalog, new_item_mask
from envs.config import SessionConfig

RESPONSE_PAD, RESPONSE_SKIP, RESPONSE_CLICK = 0, 1, 2


@dataclass(slots=True)  # slots: cheaper to create (one per step)
class Transition:
    """What one step did to each user (all arrays of shape (B,))."""

    reward: np.ndarray
    consumption: np.ndarray
    session_ended: np.ndarray
    returned: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray

    def row(self, i: int) -> Transition:
        """User ``i``'s transition, each field a numpy scalar (of the array's dtype)."""
        return Transition(*(getattr(self, field.name)[i] for field in dataclasses.fields(self)))

    def as_batch(self) -> Transition:
        """A one-user transition of numpy scalars as (1,) arrays of the same dtypes (inverse of ``row(0)``)."""
        return Transition(*(np.array([getattr(self, field.name)]) for field in dataclasses.fields(self)))


DUPLICATE_MODES = ("error", "penalty")


class UserModel(Protocol):
    """What the core needs from a user model (see ``envs.user.LongTermUserModel``).

    ``rng`` is the core's ``BlockRandom``: a ``Generator``'s methods, with
    ``random`` and ``integers`` served from pre-drawn blocks.
    """

    catalog: Catalog
    context_dim: int

    def init_state(self, num_users: int, rng: np.random.Generator) -> Any: ...

    def reset_users(self, state: Any, mask: np.ndarray, rng: np.random.Generator) -> None: ...

    def position_bias(self, slate_size: int) -> np.ndarray: ...

    def item_utilities(self, state: Any, item_ids: np.ndarray) -> np.ndarray: ...

    def no_click_utility(self, state: Any) -> np.ndarray: ...

    def transition(
        self, state: Any, slate_item_ids: np.ndarray, clicked_item: np.ndarray, rng: np.random.Generator
    ) -> Transition: ...

    def context(self, state: Any) -> np.ndarray: ...

    # Optional: ``transition_one_user(state, slate_item_ids, clicked_item: int, rng) -> Transition``
    # of numpy scalars: row 0 of ``transition`` at B = 1, computed on Python numbers. The core's
    # one-user step (``BatchedSimulator.step_one_user``) uses it when the model has it.

    def hidden_state(self, state: Any) -> dict[str, np.ndarray]:
        """Copies of the hidden state arrays (the core keeps them across a reset of the users)."""
        ...

    def sessions(self, state: Any) -> np.ndarray: ...


@dataclass
class StepResult:
    """Batched outcome of one ``BatchedSimulator.step``."""

    observation: dict[str, np.ndarray]
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, np.ndarray]
    final_observation: dict[str, np.ndarray] | None
    """observation of the users whose episode ended (rows where terminated | truncated), else None"""
    final_hidden_state: dict[str, np.ndarray] | None
    """``hidden_state()`` taken before the users whose episode ended were replaced (read those rows), else None"""


def sample_distinct_candidates(
    rng: np.random.Generator, num_items: int, shape: tuple[int, int]
) -> np.ndarray:
    """Uniform candidates, distinct within each row (the rare rows with a repeat are redrawn)."""
    rows, cols = shape
    if cols > num_items:
        raise ValueError(f"num_candidates={cols} exceeds the catalog size {num_items}")
    candidates = rng.integers(0, num_items, size=shape)
    if cols == 1:
        return candidates
    if rows == 1:  # one user: a set is cheaper than numpy calls
        while len(set(candidates.tolist()[0])) < cols:
            candidates = rng.integers(0, num_items, size=shape)
        return candidates
    repeats = _rows_with_repeats(candidates)
    while len(repeats):
        candidates[repeats] = rng.integers(0, num_items, size=(len(repeats), cols))
        repeats = repeats[_rows_with_repeats(candidates[repeats])]
    return candidates


PAIRWISE_MAX_COLUMNS = 6
"""``_rows_with_repeats`` compares column pairs up to this many columns (15 pairs), else sorts rows"""


def _rows_with_repeats(values: np.ndarray) -> np.ndarray:
    """Sorted indices of the rows of ``values`` (n, k) that contain some entry twice."""
    k = values.shape[1]
    if k < 2:
        return np.zeros(0, dtype=np.int64)
    if k <= PAIRWISE_MAX_COLUMNS:  # few columns (slates): compare every pair, no sort
        repeated = values[:, 1] == values[:, 0]
        for j in range(2, k):
            for i in range(j):
                repeated |= values[:, j] == values[:, i]
        return np.flatnonzero(repeated)
    ordered = np.sort(values, axis=1).ravel()
    # equal neighbours in the flattened sorted rows (a contiguous compare, far cheaper than a
    # per-row ``.any(axis=1)``), without the pairs that straddle two rows (flat position % k == k - 1)
    pairs = np.flatnonzero(ordered[1:] == ordered[:-1])
    repeated = np.zeros(len(values), dtype=bool)
    repeated[pairs[pairs % k != k - 1] // k] = True
    return np.flatnonzero(repeated)


class BatchedSimulator:
    """Simulate ``num_users`` users of one catalog in lock step.

    Each step every user is shown a slate of K of their C candidates; the
    choice model (multinomial logit with position bias and a no-click option)
    picks at most one item; the user model turns the choice into a reward and
    a new hidden state. A user whose episode ends is replaced by a fresh user
    in the same step (the observation returned is the new user's; the final
    observation of the old one is in ``StepResult.final_observation``).

    ``is_new_item`` (N,) bool marks the cold-start items (all False unless
    ``session.new_item_share > 0``); see the module docstring.
    """

    def __init__(
        self,
        user_model: UserModel,
        session: SessionConfig,
        num_users: int = 1,
        duplicate_mode: str = "error",
        duplicate_penalty: float = 1.0,
    ) -> None:
        if num_users < 1:
            raise ValueError(f"num_users={num_users!r} must be >= 1")
        if duplicate_mode not in DUPLICATE_MODES:
            raise ValueError(f"duplicate_mode={duplicate_mode!r} is not valid; valid: {DUPLICATE_MODES}")
        if session.num_candidates > user_model.catalog.num_items:
            raise ValueError(
                f"num_candidates={session.num_candidates} exceeds the catalog size "
                f"{user_model.catalog.num_items}"
            )
        self.is_new_item = new_item_mask(user_model.catalog.num_items, session.new_item_share, session.new_item_seed)
        self.is_new_item.flags.writeable = False
        self._old_item_ids, self._new_item_ids = _cold_start_pools(self.is_new_item, session)
        self._new_candidates_per_step = session.new_candidates_per_step
        self.user_model = user_model
        self.catalog = user_model.catalog
        self.session = session
        self.num_users = num_users
        self.duplicate_mode = duplicate_mode
        self.duplicate_penalty = duplicate_penalty
        self.num_candidates = session.num_candidates
        self.slate_size = session.slate_size
        self.history_length = session.history_length
        self.context_dim = user_model.context_dim
        self._position_bias = user_model.position_bias(self.slate_size)
        self._has_position_bias = bool(np.any(self._position_bias))
        self.rng = BlockRandom(np.random.default_rng())
        self._state: Any = None
        # flat index of row b's first entry in a (B, C) candidate / (B, K) slate array
        self._candidate_row_start = np.arange(num_users)[:, None] * self.num_candidates
        self._slate_row_start = np.arange(num_users) * self.slate_size
        self._slate_shape = (num_users, self.slate_size)
        # row p: the responses to a slate clicked at position p; the last row (no click) all skips
        self._responses_by_position = np.full((self.slate_size + 1, self.slate_size), RESPONSE_SKIP)
        np.fill_diagonal(self._responses_by_position, RESPONSE_CLICK)
        # one user: an unclicked slate's responses and consumption, to append (copied, never handed out)
        self._skipped_slate = self._responses_by_position[-1]
        self._unconsumed_slate = np.zeros(self.slate_size, dtype=np.float32)
        self._candidate_shape = (num_users, self.num_candidates)
        self._one = np.ones(1, dtype=np.int64)
        self._one_user_mask = np.ones(1, dtype=bool)
        # int64 scalars of the positions 0..K-1 and -1 (no click), indexed by position: a one-user
        # step's info without a costly ``np.int64(...)`` per step (numpy scalars are immutable)
        self._position_scalars = tuple(np.int64(p) for p in range(self.slate_size)) + (np.int64(-1),)
        self._transition_one_user = getattr(user_model, "transition_one_user", self._transition_row_zero)

    # -- randomness --------------------------------------------------------
    @property
    def np_random(self) -> np.random.Generator:
        """The generator behind ``self.rng`` (setting one starts with empty blocks)."""
        return self.rng.generator

    @np_random.setter
    def np_random(self, generator: np.random.Generator) -> None:
        self.rng = BlockRandom(generator)

    # -- episode control ---------------------------------------------------
    @property
    def is_reset(self) -> bool:
        return self._state is not None

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start all users afresh; ``seed`` re-creates the generator (None keeps it)."""
        if seed is not None or self._state is None:
            self.np_random = np.random.default_rng(seed)
        if self._state is None:
            self._state = self.user_model.init_state(self.num_users, self.rng)
        else:
            self.user_model.reset_users(self._state, np.ones(self.num_users, dtype=bool), self.rng)
        b, h = self.num_users, self.history_length
        self.history_item_ids = np.full((b, h), self.catalog.num_items, dtype=np.int64)
        self.history_responses = np.zeros((b, h), dtype=np.int64)
        self.history_consumption = np.zeros((b, h), dtype=np.float32)
        self.episode_return = np.zeros(b)
        self.episode_length = np.zeros(b, dtype=np.int64)
        self.candidate_item_ids = self._draw_candidates()
        return self.observation()

    def observation(self) -> dict[str, np.ndarray]:
        """Visible observation of every user.

        The arrays are safe to keep: the core replaces them each step and never
        writes into an array it has handed out (copy-on-write on user resets).
        """
        return {
            "history_item_ids": self.history_item_ids,
            "history_responses": self.history_responses,
            "history_consumption": self.history_consumption,
            "candidate_item_ids": self.candidate_item_ids,
            "context": self.user_model.context(self._state),
        }

    def user_observation(self) -> dict[str, np.ndarray]:
        """Row 0 of ``observation()``: the observation of a one-user core's user."""
        return {
            "history_item_ids": self.history_item_ids[0],
            "history_responses": self.history_responses[0],
            "history_consumption": self.history_consumption[0],
            "candidate_item_ids": self.candidate_item_ids[0],
            "context": self.user_model.context(self._state)[0],
        }

    # -- validation --------------------------------------------------------
    def validate_slates(self, slates: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Check shape/range/duplicates; return (int slates, rows with duplicates or None)."""
        if self._state is None:
            raise ValueError("step() called before reset(); call reset(seed=...) first")
        slates = np.asarray(slates)
        if slates.shape != self._slate_shape:
            raise ValueError(
                f"slate batch has shape {slates.shape}; expected {self._slate_shape} (users, slate_size)"
            )
        if self.num_users == 1 and slates.dtype.kind in "iu":  # one user: accept a valid slate in plain Python
            entries = slates.tolist()[0]
            if min(entries) >= 0 and max(entries) < self.num_candidates and len(set(entries)) == len(entries):
                return slates, None
        if slates.dtype.kind not in "iu":
            if slates.dtype.kind != "f" or not np.all(np.mod(slates, 1) == 0):
                raise ValueError(f"slate entries must be integers; got dtype {slates.dtype}")
            slates = slates.astype(np.int64)
        if not _entries_in_range(slates, self.num_candidates):
            row, col = np.argwhere((slates < 0) | (slates >= self.num_candidates))[0]
            raise ValueError(
                f"slate entry {slates[row, col]} (user {row}, position {col}) is out of range; "
                f"valid candidate indices: 0..{self.num_candidates - 1}"
            )
        if self.slate_size == 1:
            return slates, None
        duplicate_rows = _duplicate_rows(slates)
        if duplicate_rows is None:
            return slates, None
        if self.duplicate_mode == "error":
            row = int(np.flatnonzero(duplicate_rows)[0])
            raise ValueError(
                f"slate {slates[row].tolist()} of user {row} repeats a candidate; a slate needs "
                f"{self.slate_size} distinct indices (or duplicate_mode='penalty')"
            )
        return slates, duplicate_rows

    # -- the step ------------------------------------------------------------
    def step(self, slates: np.ndarray) -> StepResult:
        slates, duplicate_rows = self.validate_slates(slates)
        slate_item_ids, position, clicked_item = self._choose(slates, duplicate_rows)
        transition = self.user_model.transition(self._state, slate_item_ids, clicked_item, self.rng)
        reward = transition.reward
        if duplicate_rows is not None:
            reward = reward - self.duplicate_penalty * duplicate_rows
        else:
            duplicate_rows = np.zeros(self.num_users, dtype=bool)

        self._push_history(slate_item_ids, position, transition.consumption)
        self.episode_return = self.episode_return + reward
        self.episode_length = self.episode_length + self._one  # an array operand: cheaper than the scalar 1
        info = {
            "session_ended": transition.session_ended,
            "returned": transition.returned,
            "churned": transition.terminated,
            "day": self.user_model.sessions(self._state),
            "clicked_position": position,
            "clicked_item_id": clicked_item,
            "consumption": transition.consumption,
            "reward": reward,
            "duplicate_slate": duplicate_rows,
            "episode_return": self.episode_return,
            "episode_length": self.episode_length,
        }
        final_observation = final_hidden_state = None
        done = transition.terminated | transition.truncated
        # one user: .item(); count_nonzero: cheaper than .any() on small arrays
        if done.item() if self.num_users == 1 else np.count_nonzero(done):
            final_observation = self.observation()
            final_hidden_state = self.hidden_state()  # the models return copies: the reset below leaves them
            self._reset_users(done)
        self.candidate_item_ids = self._draw_candidates()
        return StepResult(
            self.observation(), reward, transition.terminated, transition.truncated, info, final_observation,
            final_hidden_state,
        )

    def step_one_user(
        self, slate: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any], dict[str, np.ndarray] | None]:
        """``step`` of a one-user core with row-level results (the single-user view's step).

        Takes one slate (K,) and returns (observation, reward, terminated, truncated, info,
        final_observation) of the one user: row 0 of what ``step`` returns (Python reward and
        flags, numpy scalars in ``info``), with the same draws and arithmetic, but without the
        (1,)-shaped info arrays and ``StepResult`` that the view would only index again.
        ``test_one_user_step_matches_step`` checks that the two agree bit for bit.
        """
        if self.num_users != 1:
            raise ValueError(f"step_one_user() needs a core with num_users=1, got {self.num_users}")
        slates, duplicate_rows = self.validate_slates(np.asarray(slate).reshape(1, -1))
        slate_item_ids, utilities = self._slate_utilities(slates, duplicate_rows)
        no_click_utility = self.user_model.no_click_utility(self._state).item()
        position = _sample_mnl_one_user(utilities.tolist()[0], no_click_utility, self.rng)
        clicked_item = slate_item_ids.item(position) if position >= 0 else -1
        transition = self._transition_one_user(self._state, slate_item_ids, clicked_item, self.rng)
        reward = transition.reward
        duplicate = duplicate_rows is not None
        if duplicate:
            reward = reward - self.duplicate_penalty * duplicate_rows[0]

        self._push_history_one_user(slate_item_ids, position, transition.consumption)
        # numpy scalars: the same float64 / int64 arithmetic as the arrays' in ``step``
        episode_return, episode_length = self.episode_return[0] + reward, self.episode_length[0] + 1
        self.episode_return, self.episode_length = np.array([episode_return]), np.array([episode_length])
        info = {
            "session_ended": transition.session_ended,
            "returned": transition.returned,
            "churned": transition.terminated,
            "day": self.user_model.sessions(self._state)[0],
            "clicked_position": self._position_scalars[position],
            "clicked_item_id": slate_item_ids[0, position] if position >= 0 else self._position_scalars[-1],
            "consumption": transition.consumption,
            "reward": reward,
            "duplicate_slate": np.True_ if duplicate else np.False_,
            "episode_return": episode_return,
            "episode_length": episode_length,
        }
        terminated, truncated = bool(transition.terminated), bool(transition.truncated)
        final_observation = None
        if terminated or truncated:
            final_observation = self.user_observation()
            self._reset_users(self._one_user_mask)
        self.candidate_item_ids = self._draw_candidates()
        return self.user_observation(), float(reward), terminated, truncated, info, final_observation

    def _choose(
        self, slates: np.ndarray, duplicate_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The users' choices from valid ``slates`` (B, K): (slate item ids (B, K), position, clicked item (B,))."""
        slate_item_ids, utilities = self._slate_utilities(slates, duplicate_rows)
        position = _sample_mnl(utilities, self.user_model.no_click_utility(self._state), self.rng)
        return slate_item_ids, position, _clicked_items(slate_item_ids, position, self._slate_row_start)

    def _slate_utilities(
        self, slates: np.ndarray, duplicate_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(slate item ids (B, K), MNL utilities (B, K)) of valid ``slates`` (B, K)."""
        if self.num_users == 1:  # one user: a flat take
            slate_item_ids = self.candidate_item_ids.take(slates)
        else:  # a flat take, cheaper than 2-d fancy indexing
            slate_item_ids = self.candidate_item_ids.take(self._candidate_row_start + slates)
        utilities = self.user_model.item_utilities(self._state, slate_item_ids)
        if self._has_position_bias:
            utilities = utilities + self._position_bias
        if duplicate_rows is not None:
            # penalty mode: a repeated entry is shown once; later copies cannot be chosen
            utilities = np.where(_first_occurrence_mask(slates), utilities, -np.inf)
        return slate_item_ids, utilities

    def _transition_row_zero(
        self, state: Any, slate_item_ids: np.ndarray, clicked_item: int, rng: np.random.Generator
    ) -> Transition:
        """Row 0 of ``user_model.transition`` at B = 1 (for models without ``transition_one_user``)."""
        return self.user_model.transition(state, slate_item_ids, np.array([clicked_item]), rng).row(0)

    def _push_history(self, slate_item_ids: np.ndarray, position: np.ndarray, consumption: np.ndarray) -> None:
        """Append this step's slate to the history (new arrays: handed-out ones stay intact)."""
        k, h = self.slate_size, self.history_length
        if len(position) == 1:
            self._push_history_one_user(slate_item_ids, position.item(), consumption.item())
            return
        responses = self._responses_by_position.take(position, axis=0)  # position -1: the all-skip row
        consumed = (responses == RESPONSE_CLICK) * consumption.astype(np.float32)[:, None]
        if k >= h:
            self.history_item_ids = slate_item_ids[:, k - h :].copy()
            self.history_responses = responses[:, k - h :]
            self.history_consumption = consumed[:, k - h :]
            return
        self.history_item_ids = _shift_in(self.history_item_ids, slate_item_ids)
        self.history_responses = _shift_in(self.history_responses, responses)
        self.history_consumption = _shift_in(self.history_consumption, consumed)

    def _push_history_one_user(self, slate_item_ids: np.ndarray, position: int, consumption: float) -> None:
        """``_push_history`` for B = 1, with the clicked ``position`` (-1: none) and its consumption as numbers.

        Each history becomes the last h entries of (old history row, this slate's entries): a
        (1, h) view of one 1-d ``concatenate`` (cheaper than one with ``axis=1`` or a shift into a
        new array), and no (1, K) response and consumption rows are built: an all-skip,
        zero-consumption block is appended and the one click then marked in the new arrays. A
        position whose entry falls off a history shorter than the slate leaves no mark.
        """
        k = self.slate_size
        item_ids = np.concatenate((self.history_item_ids[0], slate_item_ids[0]))[None, k:]
        responses = np.concatenate((self.history_responses[0], self._skipped_slate))[None, k:]
        consumed = np.concatenate((self.history_consumption[0], self._unconsumed_slate))[None, k:]
        column = self.history_length - k + position
        if position >= 0 and column >= 0:  # float32 rounding of the consumption, as ``astype`` does
            responses[0, column] = RESPONSE_CLICK
            consumed[0, column] = consumption
        self.history_item_ids, self.history_responses, self.history_consumption = item_ids, responses, consumed

    def _reset_users(self, mask: np.ndarray) -> None:
        """Replace the users in ``mask`` (copy-on-write: arrays already handed out stay intact)."""
        self.user_model.reset_users(self._state, mask, self.rng)
        users = np.flatnonzero(mask)  # indices: cheaper than three boolean-mask writes
        self.history_item_ids = self.history_item_ids.copy()
        self.history_responses = self.history_responses.copy()
        self.history_consumption = self.history_consumption.copy()
        self.history_item_ids[users] = self.catalog.num_items
        self.history_responses[users] = RESPONSE_PAD
        self.history_consumption[users] = 0.0
        self.episode_return = np.where(mask, 0.0, self.episode_return)
        self.episode_length = np.where(mask, 0, self.episode_length)

    def reset_users(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Replace the users in ``mask`` by new ones and redraw their candidates."""
        self._reset_users(mask)
        self.candidate_item_ids = self.candidate_item_ids.copy()
        num_users = int(mask.sum())
        if self._old_item_ids is None:
            candidates = sample_distinct_candidates(self.rng, self.catalog.num_items, (num_users, self.num_candidates))
        else:  # the new users are on day 0
            candidates = self._cold_start_candidates(np.zeros(num_users, dtype=np.int64))
        self.candidate_item_ids[mask] = candidates
        return self.observation()

    # -- candidates ----------------------------------------------------------
    def _draw_candidates(self) -> np.ndarray:
        """(B, C) candidates of every user for the next step (uniform over the catalog unless cold start is on)."""
        if self._old_item_ids is None:
            return sample_distinct_candidates(self.rng, self.catalog.num_items, self._candidate_shape)
        return self._cold_start_candidates(self.user_model.sessions(self._state))

    def _cold_start_candidates(self, days: np.ndarray) -> np.ndarray:
        """Candidates of users on ``days`` (R,): old items only on day 0 (and in training mode, always);
        from day 1 on, ``new_candidates_per_step`` new items among them at random positions."""
        old, new, c, m = self._old_item_ids, self._new_item_ids, self.num_candidates, self._new_candidates_per_step
        later = np.flatnonzero(days >= 1) if m else np.zeros(0, dtype=np.int64)
        if not len(later):
            return old.take(sample_distinct_candidates(self.rng, len(old), (len(days), c)))
        candidates = np.empty((len(days), c), dtype=np.int64)
        first = np.flatnonzero(days < 1)
        if len(first):
            candidates[first] = old.take(sample_distinct_candidates(self.rng, len(old), (len(first), c)))
        mixed = new.take(sample_distinct_candidates(self.rng, len(new), (len(later), m)))
        if m < c:
            mixed = np.concatenate([old.take(sample_distinct_candidates(self.rng, len(old), (len(later), c - m))),
                                    mixed], axis=1)
        candidates[later] = self.rng.permuted(mixed, axis=1)
        return candidates

    # -- privileged access (oracles, analysis) -------------------------------
    def hidden_state(self) -> dict[str, np.ndarray]:
        """The hidden user state (never in observations): for oracle baselines and analysis."""
        if self._state is None:
            raise ValueError("hidden_state() called before reset()")
        return self.user_model.hidden_state(self._state)

    def candidate_utilities(self) -> np.ndarray:
        """(B, C) true MNL utilities of the current candidates (no position bias)."""
        if self._state is None:
            raise ValueError("candidate_utilities() called before reset()")
        return self.user_model.item_utilities(self._state, self.candidate_item_ids)

    def no_click_utility(self) -> np.ndarray:
        """(B,) true utility of not clicking, for myopic click-maximising baselines."""
        return self.user_model.no_click_utility(self._state)

    @property
    def position_bias(self) -> np.ndarray:
        return self._position_bias.copy()


def _cold_start_pools(is_new_item: np.ndarray, session: SessionConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """(old item ids or None when no item is new, new item ids), checked against the session's candidate counts."""
    if session.new_item_share == 0.0:
        return None, np.zeros(0, dtype=np.int64)
    old, new = np.flatnonzero(~is_new_item), np.flatnonzero(is_new_item)
    num_items, share = len(is_new_item), session.new_item_share
    if not len(new):
        raise ValueError(f"new_item_share={share!r} makes 0 of the catalog's {num_items} items new; "
                         f"allowed: 0 or >= {0.5 / num_items:g}")
    if session.num_candidates > len(old):
        raise ValueError(f"num_candidates={session.num_candidates} exceeds the {len(old)} old items "
                         f"(new_item_share={share!r} of {num_items}); lower new_item_share or num_candidates")
    if session.new_candidates_per_step > len(new):
        raise ValueError(f"new_candidate_share={session.new_candidate_share!r} asks for "
                         f"{session.new_candidates_per_step} new candidates per step, but only {len(new)} items are "
                         f"new (new_item_share={share!r} of {num_items}); raise new_item_share")
    return old.astype(np.int64), new.astype(np.int64)


SHIFT_MIN_USERS = 256
"""``_shift_in`` shifts the flat buffer from this many users on (measured break-even: ~200)"""


def _shift_in(history: np.ndarray, new: np.ndarray) -> np.ndarray:
    """A new (B, h) array: ``history`` (B, h) without its first k columns, then ``new`` (B, k).

    For many users, the same as ``np.concatenate([history[:, k:], new], axis=1)`` as one
    contiguous copy of the buffer shifted left by k entries (each row's last k entries then
    hold the next row's first k) plus one write of the k new columns, instead of a strided
    copy row by row; for few users the one ``concatenate`` call is cheaper.
    """
    h, k = history.shape[1], new.shape[1]
    if len(history) < SHIFT_MIN_USERS:
        return np.concatenate([history[:, k:], new], axis=1)
    shifted = np.empty(history.shape, dtype=history.dtype)
    shifted.reshape(-1)[:-k] = history.reshape(-1)[k:]
    shifted[:, h - k :] = new
    return shifted


def _clicked_items(slate_item_ids: np.ndarray, position: np.ndarray, row_start: np.ndarray | None = None) -> np.ndarray:
    """(B,) item id each user clicked, -1 where the position is -1 (no click).

    ``row_start`` (B,): flat index of each row's first entry (``arange(B) * K``; made if None).
    """
    if len(position) == 1:  # one user: Python is cheaper than numpy calls
        return np.array([slate_item_ids.item(position.item()) if position.item() >= 0 else -1])
    if row_start is None:
        row_start = np.arange(len(position)) * slate_item_ids.shape[1]
    # a flat take; position -1 reads the previous row's last entry (row 0: the last one) ...
    clicked_item = slate_item_ids.take(row_start + position)
    clicked_item[position < 0] = -1  # ... and is overwritten here
    return clicked_item


def _entries_in_range(slates: np.ndarray, num_candidates: int) -> bool:
    """Whether every entry of ``slates`` (B, K) is a candidate index in ``[0, num_candidates)``."""
    if len(slates) == 1:  # one user: Python on the K entries is cheaper than numpy calls
        entries = slates[0].tolist()
        return min(entries) >= 0 and max(entries) < num_candidates
    if slates.dtype.kind == "i":  # one pass: negative entries viewed as unsigned are huge
        slates = slates.view(np.dtype(f"u{slates.dtype.itemsize}"))
    return bool(slates.max() < num_candidates)


def _duplicate_rows(slates: np.ndarray) -> np.ndarray | None:
    """(B,) bool: the rows of ``slates`` (B, K) that repeat an entry; None if no row does."""
    if len(slates) == 1:  # one user: a set is cheaper than numpy calls
        entries = slates[0].tolist()
        return np.ones(1, dtype=bool) if len(set(entries)) < len(entries) else None
    repeats = _rows_with_repeats(slates)
    if not len(repeats):
        return None
    duplicate_rows = np.zeros(len(slates), dtype=bool)
    duplicate_rows[repeats] = True
    return duplicate_rows


def _first_occurrence_mask(slates: np.ndarray) -> np.ndarray:
    k = slates.shape[1]
    same = slates[:, :, None] == slates[:, None, :]
    earlier = np.tril(np.ones((k, k), dtype=bool), k=-1)
    return ~(same & earlier[None]).any(axis=2)


def _sample_mnl(utilities: np.ndarray, no_click_utility: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample one option per row of a multinomial logit; -1 means the no-click option.

    Utilities are small (|u| < ~50), so ``exp`` needs no max-shift.
    """
    if len(utilities) == 1:
        return np.array([_sample_mnl_one_user(utilities.tolist()[0], no_click_utility.item(), rng)])
    # options along axis 0: the running sum and the count then run over contiguous rows of B
    # users (the same additions in the same order as a per-user cumsum, in K + 1 calls;
    # ``np.cumsum(axis=0)`` on a (K + 1, B) array is several times slower than this loop)
    num_users, slate_size = utilities.shape
    cumulative = np.empty((slate_size + 1, num_users))
    cumulative[0] = no_click_utility
    cumulative[1:] = utilities.T
    np.exp(cumulative, out=cumulative)
    for option in range(1, slate_size + 1):
        np.add(cumulative[option - 1], cumulative[option], out=cumulative[option])
    draw = rng.random(num_users) * cumulative[-1]
    return (cumulative < draw).sum(axis=0) - 1


def _sample_mnl_one_user(utilities: list[float], no_click_utility: float, rng: np.random.Generator) -> int:
    """``_sample_mnl`` for one user on Python numbers: the same exp, running sum and draw (one uniform)."""
    weights = np.exp([no_click_utility, *utilities]).tolist()
    cumulative = list(itertools.accumulate(weights))
    draw = rng.random() * cumulative[-1]
    return bisect.bisect_left(cumulative, draw) - 1  # the options with a running sum < draw, as batched
