"""Confidence intervals: the one place longrec computes them.

* :func:`mean_ci95` — over many i.i.d. values (users): mean and the normal-approximation
  half-width ``1.96 * sd / sqrt(n)``.
* :func:`t_ci95` — over a few values (training seeds, runs): mean and the Student-t
  half-width ``t_{0.975, n-1} * sd / sqrt(n)``.

Both ignore non-finite values. numpy and scipy only, so every package may use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
