"""Ranking metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from llm_policy import metrics as M


def test_rank_of_target_basic_ties_and_exclusion():
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.3],  # target 2 -> rank 2
            [0.4, 0.4, 0.4, 0.4],  # all tied, target 0 -> pessimistic rank 4
            [0.9, 0.8, 0.7, 0.1],  # target 3, exclude 0 and 1 -> rank 2
            [0.9, 0.8, 0.7, 0.1],  # target 0, exclude 0 (target never excluded) -> rank 1
        ]
    )
    target = torch.tensor([2, 0, 3, 0])
    exclude = torch.tensor([[False] * 4, [False] * 4, [True, True, False, False], [True, False, False, False]])
    ranks = M.rank_of_target(scores, target, exclude)
    assert ranks.tolist() == [2, 4, 2, 1]
    # numpy input works the same
    assert M.rank_of_target(scores.numpy(), target.numpy(), exclude.numpy()).tolist() == [2, 4, 2, 1]


def test_single_target_metrics_hand_computed():
    ranks = torch.tensor([1, 2, 3, 11])
    assert M.hit_rate_at_k(ranks, 10).tolist() == [1, 1, 1, 0]
    assert M.hit_rate_at_k(ranks, 2).tolist() == [1, 1, 0, 0]
    assert M.recall_at_k(ranks, 2).tolist() == [1, 1, 0, 0]
    ndcg = M.ndcg_at_k(ranks, 10).tolist()
    assert ndcg == pytest.approx([1.0, 1 / math.log2(3), 0.5, 0.0])
    assert M.mrr(ranks).tolist() == pytest.approx([1.0, 0.5, 1 / 3, 1 / 11])
    assert M.mrr_at_k(ranks, 2).tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert M.precision_at_k(ranks, 5).tolist() == pytest.approx([0.2, 0.2, 0.2, 0.0])
    # F1@5 on a hit: p = 1/5, r = 1 -> 2 * 0.2 / 1.2 = 1/3
    assert M.f1_at_k(ranks, 5).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    assert M.top1_accuracy(ranks).tolist() == [1, 0, 0, 0]


def test_ranking_metrics_dict():
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    ranks = M.rank_of_target(scores, torch.tensor([0, 0]))  # [1, 3]
    out = M.ranking_metrics(ranks, k=2)
    assert set(out) == {"hr@2", "ndcg@2", "mrr@2"}
    assert out["hr@2"] == pytest.approx(0.5)
    assert out["ndcg@2"] == pytest.approx(0.5)
    assert out["mrr@2"] == pytest.approx(0.5)
    assert M.ranking_metrics(ranks.numpy(), k=3) == pytest.approx({"hr@3": 1.0, "ndcg@3": 0.75, "mrr@3": (1 + 1 / 3) / 2})
    empty = M.ranking_metrics(np.array([], dtype=np.int64), k=10)
    assert all(math.isnan(v) for v in empty.values())


def test_full_catalog_ranks_batches_and_checks_the_scorer_shape():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.3, 0.2, 0.1], [0.9, 0.8, 0.7, 0.1]])
    histories = [np.array([1]), np.array([], dtype=np.int64), np.array([0, 1])]
    targets = np.array([2, 3, 3])
    calls = []

    def score(batch):
        calls.append(len(batch))
        start = sum(calls[:-1])
        return scores[start : start + len(batch)]

    ranks = M.full_catalog_ranks(score, histories, targets, num_items=4, batch_size=2)
    assert ranks.tolist() == [1, 4, 2] and calls == [2, 1]  # history items leave the ranking
    np.testing.assert_array_equal(ranks, M.target_ranks(scores, targets, histories))
    with pytest.raises(ValueError, match="expected"):
        M.full_catalog_ranks(lambda batch: scores[: len(batch), :3], histories, targets, num_items=4)


def test_multi_target_hand_computed():
    # order of items by score: 0, 1, 2, 3, 4
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    relevant = torch.tensor([[False, True, False, True, False], [False, False, False, False, False]])
    k = 3
    # row 0: top3 = 0,1,2 -> hits [0,1,0]
    assert M.topk_hits(scores, relevant, k)[0].tolist() == [False, True, False]
    assert M.multi_recall_at_k(scores, relevant, k).tolist() == pytest.approx([0.5, 0.0])
    assert M.multi_precision_at_k(scores, relevant, k).tolist() == pytest.approx([1 / 3, 0.0])
    p, r = 1 / 3, 0.5
    assert M.multi_f1_at_k(scores, relevant, k).tolist() == pytest.approx([2 * p * r / (p + r), 0.0])
    dcg = 1 / math.log2(3)
    idcg = 1 + 1 / math.log2(3)
    assert M.multi_ndcg_at_k(scores, relevant, k).tolist() == pytest.approx([dcg / idcg, 0.0])
    assert M.multi_mrr(scores, relevant).tolist() == pytest.approx([0.5, 0.0])
    assert M.multi_hit_rate_at_k(scores, relevant, 1).tolist() == [0.0, 0.0]
    assert M.multi_hit_rate_at_k(scores, relevant, 2).tolist() == [1.0, 0.0]
    # excluding item 0 moves relevant item 1 to the top
    excl = torch.zeros_like(relevant)
    excl[:, 0] = True
    assert M.multi_mrr(scores, relevant, excl).tolist() == pytest.approx([1.0, 0.0])
    out = M.multi_target_metrics(scores, relevant, ks=(3,))
    assert out["recall@3"] == pytest.approx(0.25)


def test_multi_target_single_relevant_matches_single_target():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 20, generator=gen)
    target = torch.randint(0, 20, (64,), generator=gen)
    relevant = torch.nn.functional.one_hot(target, 20).bool()
    ranks = M.rank_of_target(scores, target)
    for k in (1, 5, 10):
        torch.testing.assert_close(M.multi_ndcg_at_k(scores, relevant, k), M.ndcg_at_k(ranks, k))
        torch.testing.assert_close(M.multi_recall_at_k(scores, relevant, k), M.recall_at_k(ranks, k))
        torch.testing.assert_close(M.multi_f1_at_k(scores, relevant, k), M.f1_at_k(ranks, k))
    torch.testing.assert_close(M.multi_mrr(scores, relevant), M.mrr(ranks))
    # rank agrees with a numpy argsort reference (no ties with continuous scores)
    ref = (np.argsort(-scores.numpy(), axis=1) == target.numpy()[:, None]).argmax(1) + 1
    assert ranks.tolist() == ref.tolist()


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        M.hit_rate_at_k(torch.tensor([1]), k)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="target ids must lie"):
        M.rank_of_target(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="scores must have shape"):
        M.rank_of_target(torch.zeros(3), torch.tensor([0]))
