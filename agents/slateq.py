"""SlateQ: slate value decomposition under a multinomial-logit choice model.

Follows Ie et al. 2019, "SlateQ: A Tractable Decomposition for Reinforcement
Learning with Recommendation Sets" (IJCAI). With a user choice model
``P(i | s, A)`` (here the simulator's own multinomial logit with position bias
and a no-click option), the long-term value of a slate decomposes into
item-wise values::

    Q(s, A) = sum_{i in A} P(i | s, A) Q(s, i) + P(no click | s, A) Q(s, none)

so only ``Q(s, i)`` (and the no-click value) is learned, by TD on the item the
user actually chose (SARSA or Q-learning, the paper's two variants); the slate
is then picked by the paper's greedy optimisation (add the item that raises the
slate value most, best position first) or its top-K rule (rank by
``v(s, i) Q(s, i)``).

The choice-model helpers at the top are shared with the hidden-state oracle
(``agents.baselines.OracleAgent``), which uses the same optimisation with a
hand-made item value.

Privilege: SlateQ here knows the simulator's choice model (the true MNL
utilities and position bias, read from the core), as the paper assumes a known
or separately learned choice model; the long-term item values are learned from
visible observations only.
"""

from __future__ import annotations

import math

import numpy as np

SLATE_OPTIMISERS = ("greedy", "topk")
TD_TARGETS = ("sarsa", "q_learning")


# -- the choice model and slate optimisation ---------------------------------------------------------


def mnl_weights(utilities: np.ndarray) -> np.ndarray:
    """``exp(utility)``; utilities of -inf (never chosen) give weight 0."""
    return np.exp(np.asarray(utilities, dtype=np.float64))


def slate_value(
    item_values: np.ndarray,
    utilities: np.ndarray,
    position_bias: np.ndarray,
    no_click_utility: np.ndarray,
    no_click_value: np.ndarray,
    slates: np.ndarray,
) -> np.ndarray:
    """(B,) expected value ``sum_i P(i | s, A) Q(s, i) + P(none) Q(s, none)`` of ``slates`` (B, K).

    ``item_values``/``utilities`` are (B, C) over the candidates, ``position_bias`` (K,)
    is added to the utility of the item at each slate position (MNL with position bias).
    """
    rows = np.arange(len(slates))[:, None]
    weight = mnl_weights(utilities[rows, slates] + position_bias[None, :])
    no_click = mnl_weights(no_click_utility)
    numerator = no_click * no_click_value + (weight * item_values[rows, slates]).sum(axis=1)
    return numerator / (no_click + weight.sum(axis=1))


def greedy_mnl_slate(
    item_values: np.ndarray,
    utilities: np.ndarray,
    position_bias: np.ndarray,
    no_click_utility: np.ndarray,
    no_click_value: np.ndarray,
) -> np.ndarray:
    """SlateQ's greedy optimisation: fill positions best-first with the item raising the slate value most.

    Every position is filled (a slate always has K items), even when an item
    lowers the value; positions are filled in order of decreasing position bias.
    Returns (B, K) candidate indices, position 0 first.
    """
    item_values = np.asarray(item_values, dtype=np.float64)
    num_users, num_candidates = item_values.shape
    slate_size = len(position_bias)
    if slate_size > num_candidates:
        raise ValueError(f"slate size {slate_size} exceeds the {num_candidates} candidates")
    base_weight = mnl_weights(utilities)
    no_click = mnl_weights(no_click_utility)
    numerator = no_click * np.asarray(no_click_value, dtype=np.float64)
    denominator = no_click.copy()
    available = np.ones((num_users, num_candidates), dtype=bool)
    slates = np.zeros((num_users, slate_size), dtype=np.int64)
    rows = np.arange(num_users)
    for position in np.argsort(-np.asarray(position_bias), kind="stable"):
        weight = base_weight * math.exp(float(position_bias[position]))
        value = (numerator[:, None] + weight * item_values) / (denominator[:, None] + weight)
        # ties (e.g. zero-weight items) break toward the higher item value
        value = np.where(available, value + 1e-9 * np.tanh(item_values), -np.inf)
        pick = value.argmax(axis=1)
        slates[:, position] = pick
        available[rows, pick] = False
        numerator = numerator + weight[rows, pick] * item_values[rows, pick]
        denominator = denominator + weight[rows, pick]
    return slates


def topk_mnl_slate(
    item_values: np.ndarray, utilities: np.ndarray, position_bias: np.ndarray
) -> np.ndarray:
    """SlateQ's top-K rule: rank candidates by ``v(s, i) Q(s, i)`` (v = exp(utility)); best in position 0."""
    score = mnl_weights(utilities) * np.asarray(item_values, dtype=np.float64)
    order = np.argsort(-score, axis=1, kind="stable")[:, : len(position_bias)]
    # place the best-scored item in the position with the largest bias
    slates = np.empty_like(order)
    slates[:, np.argsort(-np.asarray(position_bias), kind="stable")] = order
    return slates


def optimise_slate(
    optimiser: str,
    item_values: np.ndarray,
    utilities: np.ndarray,
    position_bias: np.ndarray,
    no_click_utility: np.ndarray,
    no_click_value: np.ndarray,
) -> np.ndarray:
    """Dispatch to ``greedy_mnl_slate`` or ``topk_mnl_slate`` by name."""
    if optimiser == "greedy":
        return greedy_mnl_slate(item_values, utilities, position_bias, no_click_utility, no_click_value)
    if optimiser == "topk":
        return topk_mnl_slate(item_values, utilities, position_bias)
    raise ValueError(f"slate optimiser {optimiser!r} is not known; valid: {SLATE_OPTIMISERS}")
