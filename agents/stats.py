"""Confidence intervals: the one place longrec computes them.

* :func:`mean_ci95` — over many i.i.d. values (users): mean and the normal-approximation
  half-width ``1.96 * sd / sqrt(n)``.
* :func:`t_ci95` — over a few values (training seeds, runs): mean and the Student-t
  half-width ``t_{0.975, n-1} * sd / sqrt(n)``.
* :func:`paired_difference` — two agents on the same users: the per-user difference
  averaged within each seed (normal CI over users), then across seeds (Student-t CI).

Both ignore non-finite values. numpy and scipy only, so every package may use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=np.float64).ravel()
    except TypeError:  # None entries
        x = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
    return x[np.isfinite(x)]


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and normal-approximation 95% CI half-width over the finite entries.

    ``(nan, nan)`` for no finite value, ``(value, 0.0)`` for one.
    """
    x = _finite(values)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), 0.0
    return float(x.mean()), float(1.96 * x.std(ddof=1) / math.sqrt(len(x)))


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student-t quantile (``scipy.special``, much lighter to import than ``scipy.stats``)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def t_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and Student-t 95% CI half-width over the finite entries.

    ``(nan, nan)`` for no finite value, ``(value, nan)`` for one (a spread needs two).
    """
    x = _finite(values)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x[0]), math.nan
    return float(x.mean()), float(t_quantile(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


@dataclass(frozen=True)
class PairedDifference:
    """Mean paired difference ``treatment - control`` and its 95% CI half-width."""

    diff: float
    """mean over seeds of the per-seed mean difference over users"""
    ci95: float
    """Student-t half-width across seeds; with one seed, the normal half-width over that seed's users"""
    per_seed: tuple[tuple[float, float], ...]
    """``(mean difference, normal 95% half-width over users)`` of each seed"""

    @property
    def positive_in_every_seed(self) -> bool:
        return all(diff > 0 for diff, _ in self.per_seed)


def paired_difference(treatment: Sequence[np.ndarray], control: Sequence[np.ndarray]) -> PairedDifference:
    """Paired per user within each seed, then across seeds.

    ``treatment[s]`` and ``control[s]`` are per-user outcomes of the same users (seed ``s``'s
    evaluation users, in the same order) under two agents.
    """
    if len(treatment) != len(control) or not treatment:
        raise ValueError(f"paired_difference needs the same number (>= 1) of seeds on both sides, got "
                         f"{len(treatment)} and {len(control)}")
    per_seed = []
    for t, c in zip(treatment, control, strict=True):
        t, c = np.asarray(t, dtype=np.float64), np.asarray(c, dtype=np.float64)
        if t.shape != c.shape:
            raise ValueError(f"paired outcomes must cover the same users: shapes {t.shape} and {c.shape}")
        per_seed.append(mean_ci95(t - c))
    if len(per_seed) == 1:
        return PairedDifference(per_seed[0][0], per_seed[0][1], tuple(per_seed))
    diff, half = t_ci95([d for d, _ in per_seed])
    return PairedDifference(diff, half, tuple(per_seed))
