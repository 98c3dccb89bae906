"""Tests of the offline leave-one-out protocol against hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agents.offline_protocol import (
    PopularityScorer,
    bucket_labels,
    evaluate_next_item,
    format_table,
    leave_one_out_split,
)
from envs.movielens import load_movielens
from llm_policy.metrics import history_mask, ranking_metrics, target_ranks

FIXTURE = Path(__file__).parent / "fixtures" / "ml_tiny"

# Three kept users (u2 has only 4 interactions and is dropped), 8 items.
SEQUENCES = [
    np.array([0, 1, 2, 3, 4]),  # train [0 1 2], valid 3, test 4
    np.array([5, 6, 7, 1, 2, 0]),  # train [5 6 7 1], valid 2, test 0
    np.array([3, 4, 5, 6]),  # dropped
    np.array([7, 6, 5, 4, 3, 2, 1]),  # train [7 6 5 4 3], valid 2, test 1
]
SCORES = np.array([8.0, 7, 6, 5, 4, 3, 2, 1])  # item 0 best, item 7 worst, for every user


class FixedScorer:
    def __init__(self, row: np.ndarray) -> None:
        self.row = row

    def score(self, histories):
        return np.tile(self.row, (len(histories), 1))


def make_split():
    return leave_one_out_split(SEQUENCES, num_items=8)


def test_split_by_hand() -> None:
    split = make_split()
    np.testing.assert_array_equal(split.users, [0, 1, 3])
    assert [s.tolist() for s in split.train] == [[0, 1, 2], [5, 6, 7, 1], [7, 6, 5, 4, 3]]
    np.testing.assert_array_equal(split.valid_target, [3, 2, 2])
    np.testing.assert_array_equal(split.test_target, [4, 0, 1])
    assert [h.tolist() for h in split.histories("valid")] == [[0, 1, 2], [5, 6, 7, 1], [7, 6, 5, 4, 3]]
    assert [h.tolist() for h in split.histories("test")] == [[0, 1, 2, 3], [5, 6, 7, 1, 2], [7, 6, 5, 4, 3, 2]]
    np.testing.assert_array_equal(split.train_item_counts(), [1, 2, 1, 1, 1, 2, 2, 2])


def test_history_items_are_excluded_from_the_ranking() -> None:
    split = make_split()
    hist = split.histories("test")
    ranks = target_ranks(np.tile(SCORES, (3, 1)), split.test_target, hist)
    # u0: items 0-3 seen, target 4 beats the unseen 5-7 -> 1; u1: target 0 is best -> 1;
    # u3: unseen item 0 beats target 1 -> 2.
    np.testing.assert_array_equal(ranks, [1, 1, 2])
    no_history = target_ranks(np.tile(SCORES, (3, 1)), split.test_target, [np.array([], dtype=np.int64)] * 3)
    np.testing.assert_array_equal(no_history, [5, 1, 2])
    mask = history_mask(hist, 8)
    assert mask.sum() == 4 + 5 + 6 and mask[0, :4].all() and not mask[0, 4:].any()


def test_target_in_history_is_still_ranked() -> None:
    ranks = target_ranks(np.tile(SCORES, (1, 1)), np.array([3]), [np.array([0, 3])])
    np.testing.assert_array_equal(ranks, [3])  # 1 and 2 above; 0 excluded; 3 itself kept


def test_metrics_by_hand() -> None:
    split = make_split()
    result = evaluate_next_item(FixedScorer(SCORES), split, stage="test", k=10, batch_size=2)
    np.testing.assert_array_equal(result.ranks, [1, 1, 2])
    m = result.metrics()
    assert m["hr@10"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 + 0.5) / 3)
    m1 = ranking_metrics(result.ranks, k=1)
    assert m1 == pytest.approx({"hr@1": 2 / 3, "ndcg@1": 2 / 3, "mrr@1": 2 / 3})
    valid = evaluate_next_item(FixedScorer(SCORES), split, stage="valid")
    # u0: target 3 beats unseen 4-7 -> 1; u1: unseen 0 above target 2 -> 2; u3: unseen 0, 1 above -> 3.
    np.testing.assert_array_equal(valid.ranks, [1, 2, 3])
    assert valid.metrics()["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_ties_are_pessimistic_and_popularity_by_hand() -> None:
    split = make_split()
    constant = evaluate_next_item(FixedScorer(np.zeros(8)), split)
    np.testing.assert_array_equal(constant.ranks, [4, 3, 2])  # number of unseen items incl. the target
    popularity = evaluate_next_item(PopularityScorer.fit(split), split)
    # counts [1 2 1 1 1 2 2 2]: u0 target 4 (1) below unseen 5,6,7 (2) -> 4;
    # u1 target 0 (1) ties unseen 3, 4 -> 3; u3 target 1 (2) vs unseen 0 (1) -> 1.
    np.testing.assert_array_equal(popularity.ranks, [4, 3, 1])


def test_cold_start_buckets_by_hand() -> None:
    split = make_split()
    result = evaluate_next_item(FixedScorer(SCORES), split, bucket_edges=(2,))
    np.testing.assert_array_equal(result.target_train_counts, [1, 1, 2])
    buckets = result.by_bucket()
    assert list(buckets) == ["0-1", ">=2"]
    assert buckets["0-1"]["users"] == 2 and buckets["0-1"]["ndcg@10"] == pytest.approx(1.0)
    assert buckets[">=2"]["users"] == 1 and buckets[">=2"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert bucket_labels() == ("0-4", "5-19", ">=20")
    table = format_table({"fixed": result})
    assert "| fixed | 1.0000 |" in table and "0-1 (2 users)" in table


def test_protocol_on_fixture_folder() -> None:
    data = load_movielens(FIXTURE)
    split = leave_one_out_split(data.sequences(), data.num_items)
    np.testing.assert_array_equal(split.users, [0, 1])  # user 30 (4 ratings) dropped
    index = {int(m): i for i, m in enumerate(data.movie_ids)}
    assert split.test_target.tolist() == [index[7], index[7]]
    assert split.valid_target.tolist() == [index[5], index[5]]
    assert split.train[1].tolist() == [index[2], index[3], index[1], index[9]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_interactions": 2}, "min_interactions"),
        ({"num_items": 0}, "num_items"),
    ],
)
def test_split_errors(kwargs: dict, match: str) -> None:
    args = {"num_items": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        leave_one_out_split(SEQUENCES, **args)


def test_other_errors() -> None:
    with pytest.raises(ValueError, match="outside"):
        leave_one_out_split([np.array([0, 1, 2, 3, 9])], num_items=8)
    with pytest.raises(ValueError, match="no user"):
        leave_one_out_split([np.array([0, 1])], num_items=8)
    split = make_split()
    with pytest.raises(ValueError, match="stage"):
        split.targets("train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        evaluate_next_item(FixedScorer(np.zeros(7)), split)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_next_item(FixedScorer(np.full(8, np.nan)), split)
    with pytest.raises(ValueError, match="increasing"):
        bucket_labels((5, 5))
