"""Offline ranking metrics for next-item and slate recommendation.

Definitions follow the standard top-K evaluation protocol used in sequential
recommendation (e.g. SASRec, Kang & McAuley 2018; BERT4Rec, Sun et al. 2019):

* single target: each row has one relevant item; its **rank** (1 = best) among
  the scored items decides every metric. ``HR@K`` (= Recall@K for one target) is
  ``rank <= K``, ``NDCG@K`` is ``1 / log2(rank + 1)`` when ``rank <= K``,
  ``MRR@K`` is ``1 / rank`` when ``rank <= K`` (``MRR`` without a cut-off uses
  every rank), precision@K is ``hit / K`` and top-1 accuracy is ``rank == 1``.
* multi target: each row has a set of relevant items (a boolean mask); Recall@K
  = hits in the top K / number of relevant, precision@K = hits / K, F1@K their
  harmonic mean, NDCG@K with binary gains normalised by the ideal DCG
  (``min(K, num_relevant)`` leading hits), MRR = 1 / rank of the first relevant.

Ties are broken pessimistically: an item tied with the target counts as ranked
above it, so a constant scorer gets the worst rank and never looks good by luck.

Everything is vectorised torch (CPU or GPU); numpy arrays are accepted and
converted. All per-row functions return a float tensor ``(B,)``; average them
with ``.mean()`` (see :func:`ranking_metrics` for a ready dict).

Full-catalog next-item ranking (leave-one-out protocols, the validation of
``llm_policy.next_item``) excludes the items of each user's history:
:func:`history_mask`, :func:`target_ranks` (numpy in and out) and
:func:`full_catalog_ranks`, which scores histories in batches with any
``score(histories) -> (B, N)`` function.

Typical use::

    ranks = rank_of_target(scores, target, exclude_mask=already_seen)
    ranking_metrics(ranks, k=10)  # {"hr@10": ..., "ndcg@10": ..., "mrr@10": ...}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "rank_of_target",
    "history_mask",
    "target_ranks",
    "full_catalog_ranks",
    "hit_rate_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "mrr",
    "mrr_at_k",
    "precision_at_k",
    "f1_at_k",
    "top1_accuracy",
    "topk_hits",
    "multi_recall_at_k",
    "multi_precision_at_k",
    "multi_f1_at_k",
    "multi_ndcg_at_k",
    "multi_mrr",
    "multi_hit_rate_at_k",
    "ranking_metrics",
    "multi_target_metrics",
]

ArrayLike = torch.Tensor | np.ndarray


def _as_tensor(x: ArrayLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


def _check_k(k: int) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def rank_of_target(
    scores: ArrayLike,
    target: ArrayLike,
    exclude_mask: ArrayLike | None = None,
) -> torch.Tensor:
    """1-based rank of the target item in each row of ``scores``.

    Args:
        scores: ``(B, N)`` float scores (higher = better), over the logged
            candidates (N = C) or the full catalog.
        target: ``(B,)`` integer column of the relevant item in each row.
        exclude_mask: optional ``(B, N)`` bool, True for items that must not be
            ranked (e.g. already seen items). The target itself is never
            excluded, even when its entry is True.

    Returns:
        ``(B,)`` int64 ranks in ``[1, N]``; ties count against the target.
    """
    scores = _as_tensor(scores).float()
    target = _as_tensor(target).long()
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, N), got {tuple(scores.shape)}")
    if target.shape != (scores.shape[0],):
        raise ValueError(f"target must have shape ({scores.shape[0]},), got {tuple(target.shape)}")
    n = scores.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n):
        raise ValueError(f"target ids must lie in [0, {n - 1}], got min {int(target.min())}, max {int(target.max())}")
    target = target.to(scores.device)
    target_score = scores.gather(1, target[:, None])
    above = scores >= target_score
    if exclude_mask is not None:
        exclude = _as_tensor(exclude_mask).to(device=scores.device, dtype=torch.bool)
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude_mask must have shape {tuple(scores.shape)}, got {tuple(exclude.shape)}")
        above = above & ~exclude
    # The target itself is always counted once (>= holds for it), giving rank >= 1.
    above = above.clone()
    above.scatter_(1, target[:, None], True)
    return above.sum(dim=1)


def history_mask(histories: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """(B, N) bool: True where item i occurs in history b (the items to exclude from the ranking)."""
    mask = np.zeros((len(histories), num_items), dtype=bool)
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    if rows.size:
        mask[rows, np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])] = True
    return mask


def target_ranks(scores: np.ndarray, targets: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """(B,) int64 1-based pessimistic rank of each target among all N items, excluding history items.

    ``rank[b] = 1 + #{i != target[b], i not in histories[b] : scores[b, i] >= scores[b, target[b]]}``
    (:func:`rank_of_target` with the history as exclusion mask); ``scores`` is ``(B, N)``.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != targets.shape[0] or len(histories) != targets.shape[0]:
        raise ValueError(
            f"scores must be (B, N) with B = len(targets) = len(histories); got scores {scores.shape}, "
            f"targets {targets.shape}, {len(histories)} histories"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    exclude = history_mask(histories, scores.shape[1])
    return rank_of_target(scores, targets, exclude_mask=exclude).numpy().astype(np.int64)


def full_catalog_ranks(
    score: Callable[[Sequence[np.ndarray]], np.ndarray],
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    *,
    batch_size: int = 128,
) -> np.ndarray:
    """(U,) int64 :func:`target_ranks` of every target, ``score`` called on ``batch_size`` histories at a time.

    ``score(histories)`` returns ``(B, num_items)`` scores (higher = more likely next) for B histories
    of item ids, oldest first.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    targets = np.asarray(targets, dtype=np.int64)
    ranks = np.empty(len(histories), dtype=np.int64)
    for start in range(0, len(histories), batch_size):
        stop = min(start + batch_size, len(histories))
        batch = histories[start:stop]
        scores = np.asarray(score(batch))
        if scores.shape != (stop - start, num_items):
            raise ValueError(f"scorer returned shape {scores.shape}, expected {(stop - start, num_items)}")
        ranks[start:stop] = target_ranks(scores, targets[start:stop], batch)
    return ranks


def hit_rate_at_k(ranks: ArrayLike, k: int) -> torch.Tensor:
    """HR@K: 1 if the target's rank is at most K, else 0."""
    _check_k(k)
    return (_as_tensor(ranks) <= k).float()


def recall_at_k(ranks: ArrayLike, k: int) -> torch.Tensor:
    """Recall@K for a single target (identical to HR@K)."""
    return hit_rate_at_k(ranks, k)


def ndcg_at_k(ranks: ArrayLike, k: int) -> torch.Tensor:
    """NDCG@K for a single target: ``1 / log2(rank + 1)`` if ``rank <= K``, else 0."""
    _check_k(k)
    r = _as_tensor(ranks).float()
    return torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))


def mrr(ranks: ArrayLike) -> torch.Tensor:
    """Reciprocal rank ``1 / rank`` (no cut-off)."""
    return 1.0 / _as_tensor(ranks).float()


def mrr_at_k(ranks: ArrayLike, k: int) -> torch.Tensor:
    """MRR@K: ``1 / rank`` if ``rank <= K``, else 0."""
    _check_k(k)
    r = _as_tensor(ranks).float()
    return torch.where(r <= k, 1.0 / r, torch.zeros_like(r))


def precision_at_k(ranks: ArrayLike, k: int) -> torch.Tensor:
    """Precision@K for a single target: ``hit / K``."""
    return hit_rate_at_k(ranks, k) / k


def f1_at_k(ranks: ArrayLike, k: int) -> torch.Tensor:
    """F1@K for a single target: harmonic mean of precision@K and recall@K (= 2 / (K + 1) on a hit)."""
    return hit_rate_at_k(ranks, k) * (2.0 / (k + 1))


def top1_accuracy(ranks: ArrayLike) -> torch.Tensor:
    """1 if the target is ranked first, else 0."""
    return (_as_tensor(ranks) == 1).float()


# ----------------------------------------------------------------------------------------------
# Multi-target ranking
# ----------------------------------------------------------------------------------------------


def topk_hits(scores: ArrayLike, relevant: ArrayLike, k: int, exclude_mask: ArrayLike | None = None) -> torch.Tensor:
    """``(B, k')`` bool: is the item at each of the top ``k' = min(k, N)`` positions relevant?

    Excluded items are pushed below every other item. Ties are broken
    pessimistically (non-relevant items first among equal scores).
    """
    _check_k(k)
    scores = _as_tensor(scores).float()
    relevant = _as_tensor(relevant).to(device=scores.device, dtype=torch.bool)
    if relevant.shape != scores.shape:
        raise ValueError(f"relevant must have shape {tuple(scores.shape)}, got {tuple(relevant.shape)}")
    if exclude_mask is not None:
        exclude = _as_tensor(exclude_mask).to(device=scores.device, dtype=torch.bool)
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude_mask must have shape {tuple(scores.shape)}, got {tuple(exclude.shape)}")
        scores = scores.masked_fill(exclude & ~relevant, float("-inf"))
    # Pessimistic ties: sort by (score desc, relevant asc) with a stable sort on the key pair.
    order_rel = torch.argsort(relevant.to(torch.int8), dim=1, stable=True)
    scores_by_rel = scores.gather(1, order_rel)
    order = torch.argsort(scores_by_rel, dim=1, descending=True, stable=True)
    top = order_rel.gather(1, order)[:, : min(k, scores.shape[1])]
    return relevant.gather(1, top)


def _num_relevant(relevant: ArrayLike) -> torch.Tensor:
    return _as_tensor(relevant).to(torch.bool).sum(dim=1).float()


def multi_recall_at_k(scores: ArrayLike, relevant: ArrayLike, k: int, exclude_mask: ArrayLike | None = None) -> torch.Tensor:
    """Recall@K = hits in the top K / number of relevant items (0 for rows without relevant items)."""
    hits = topk_hits(scores, relevant, k, exclude_mask).sum(dim=1).float()
    n_rel = _num_relevant(relevant).to(hits.device)
    return torch.where(n_rel > 0, hits / n_rel.clamp(min=1), torch.zeros_like(hits))


def multi_hit_rate_at_k(scores: ArrayLike, relevant: ArrayLike, k: int, exclude_mask: ArrayLike | None = None) -> torch.Tensor:
    """HR@K = 1 if any relevant item is in the top K."""
    return topk_hits(scores, relevant, k, exclude_mask).any(dim=1).float()


def multi_precision_at_k(scores: ArrayLike, relevant: ArrayLike, k: int, exclude_mask: ArrayLike | None = None) -> torch.Tensor:
    """Precision@K = hits in the top K / K."""
    return topk_hits(scores, relevant, k, exclude_mask).sum(dim=1).float() / k


def multi_f1_at_k(scores: ArrayLike, relevant: ArrayLike, k: int, exclude_mask: ArrayLike | None = None) -> torch.Tensor:
    """F1@K: harmonic mean of precision@K and recall@K (0 when both are 0)."""
    p = multi_precision_at_k(scores, relevant, k, exclude_mask)
    r = multi_recall_at_k(scores, relevant, k, exclude_mask)
    denom = p + r
    return torch.where(denom > 0, 2 * p * r / denom.clamp(min=1e-12), torch.zeros_like(denom))


def multi_ndcg_at_k(scores: ArrayLike, relevant: ArrayLike, k: int, exclude_mask: ArrayLike | None = None) -> torch.Tensor:
    """NDCG@K with binary gains; IDCG puts ``min(K, num_relevant)`` hits first."""
    hits = topk_hits(scores, relevant, k, exclude_mask).float()
    kk = hits.shape[1]
    discounts = 1.0 / torch.log2(torch.arange(2, kk + 2, device=hits.device, dtype=torch.float32))
    dcg = (hits * discounts).sum(dim=1)
    n_rel = _num_relevant(relevant).to(hits.device).clamp(max=kk).long()
    ideal = torch.cat([torch.zeros(1, device=hits.device), discounts.cumsum(0)])[n_rel]
    return torch.where(ideal > 0, dcg / ideal.clamp(min=1e-12), torch.zeros_like(dcg))


def multi_mrr(scores: ArrayLike, relevant: ArrayLike, exclude_mask: ArrayLike | None = None) -> torch.Tensor:
    """Reciprocal rank of the first relevant item (0 for rows without relevant items)."""
    scores_t = _as_tensor(scores)
    hits = topk_hits(scores_t, relevant, scores_t.shape[1], exclude_mask)
    any_hit = hits.any(dim=1)
    first = hits.float().argmax(dim=1).float() + 1.0
    return torch.where(any_hit, 1.0 / first, torch.zeros_like(first))


# ----------------------------------------------------------------------------------------------
# Convenience dicts
# ----------------------------------------------------------------------------------------------


def ranking_metrics(ranks: ArrayLike, k: int = 10) -> dict[str, float]:
    """``{"hr@k", "ndcg@k", "mrr@k"}`` of single-target 1-based ranks, averaged over rows (NaN when empty)."""
    ranks_t = torch.as_tensor(np.asarray(ranks, dtype=np.int64))
    if ranks_t.numel() == 0:
        return {f"hr@{k}": float("nan"), f"ndcg@{k}": float("nan"), f"mrr@{k}": float("nan")}
    return {
        f"hr@{k}": float(hit_rate_at_k(ranks_t, k).mean()),
        f"ndcg@{k}": float(ndcg_at_k(ranks_t, k).mean()),
        f"mrr@{k}": float(mrr_at_k(ranks_t, k).mean()),
    }


def multi_target_metrics(
    scores: ArrayLike,
    relevant: ArrayLike,
    ks: tuple[int, ...] = (1, 5, 10),
    exclude_mask: ArrayLike | None = None,
) -> dict[str, float]:
    """Mean multi-target metrics: ``recall@K``, ``hr@K``, ``precision@K``, ``f1@K``, ``ndcg@K`` and ``mrr``."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(multi_recall_at_k(scores, relevant, k, exclude_mask).mean())
        out[f"hr@{k}"] = float(multi_hit_rate_at_k(scores, relevant, k, exclude_mask).mean())
        out[f"precision@{k}"] = float(multi_precision_at_k(scores, relevant, k, exclude_mask).mean())
        out[f"f1@{k}"] = float(multi_f1_at_k(scores, relevant, k, exclude_mask).mean())
        out[f"ndcg@{k}"] = float(multi_ndcg_at_k(scores, relevant, k, exclude_mask).mean())
    out["mrr"] = float(multi_mrr(scores, relevant, exclude_mask).mean())
    return out
