"""Statistics: the one place longrec computes confidence intervals and aggregates.

Simple intervals (numpy and scipy only, so every package may use them):

* :func:`mean_ci95` — over many i.i.d. values (users): mean and the normal-approximation
  half-width ``1.96 * sd / sqrt(n)``.
* :func:`t_ci95` — over a few values (training seeds, runs): mean and the Student-t
  half-width ``t_{0.975, n-1} * sd / sqrt(n)``.
* :func:`paired_difference` — two agents on the same users: the per-user difference
  averaged within each seed (normal CI over users), then across seeds (Student-t CI).
* :func:`coverage_ci95` — catalog coverage with a bootstrap-over-users CI.

The reporting practice of Agarwal et al. (NeurIPS 2021, "Deep RL at the edge of the
statistical precipice") through their library ``rliable`` (imported on first use):

* :func:`iqm_ci95` — interquartile mean over runs with a stratified-bootstrap 95% CI;
* :func:`probability_of_improvement` — P(a run of X beats a run of Y) with its CI;
* :func:`performance_profile` — fraction of runs scoring above each threshold, with CI bands;
* :func:`paired_bootstrap_ci95` — per-user paired differences with a bootstrap CI over users
  (``arch.bootstrap``, which rliable builds on), for offline ranking metrics.

All of them ignore non-finite values where they take plain lists.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
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


def t_band95(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise mean and Student-t 95% half-width of ``curves`` (runs x points): a learning curve's band."""
    ys = np.asarray(curves, dtype=np.float64)
    if len(ys) < 2:
        return ys.mean(axis=0), np.full(ys.shape[1:], math.nan)
    return ys.mean(axis=0), t_quantile(len(ys) - 1) * ys.std(axis=0, ddof=1) / math.sqrt(len(ys))


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


def coverage_ci95(seen: np.ndarray, rng: np.random.Generator, resamples: int = 100) -> tuple[float, float]:
    """Catalog coverage of ``seen`` (users x items) and a bootstrap-over-users 95% CI half-width."""
    coverage = float(seen.any(axis=0).mean())
    num_users = len(seen)
    if num_users < 2:
        return coverage, 0.0
    seen_float = seen.astype(np.float32)
    samples = []
    for start in range(0, resamples, 25):
        count = min(25, resamples - start)
        weights = rng.multinomial(num_users, np.full(num_users, 1.0 / num_users), size=count).astype(np.float32)
        samples.append(((weights @ seen_float) > 0).mean(axis=1))
    low, high = np.percentile(np.concatenate(samples), [2.5, 97.5])
    return coverage, float((high - low) / 2)


# --------------------------------------------------------------------------- rliable: robust aggregates

BOOTSTRAP_REPS = 2000
"""bootstrap resamples of the rliable estimates (rliable's paper uses 2,000 for its CIs of profiles)"""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% confidence interval ``[low, high]`` (not necessarily symmetric)."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _runs(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(runs, 1)``: rliable's score matrix of one task."""
    return _finite(values).reshape(-1, 1)


def _rliable():
    """``(library, metrics)`` of rliable, with the deprecation chatter of its bootstrap backend silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from rliable import library, metrics
    return library, metrics


@contextmanager
def _seeded(seed: int):
    """Reproducible rliable bootstraps: some of them draw from numpy's global generator, so it is seeded
    here and restored afterwards (callers' random streams are left as they were); arch's warning about
    rliable's ``random_state`` keyword is silenced."""
    state = np.random.get_state()  # noqa: NPY002 (rliable draws from the legacy global generator)
    np.random.seed(seed)  # noqa: NPY002
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield np.random.RandomState(seed)
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _interval_estimates(library, score_dict: Mapping[str, object], func, reps: int, seed: int):
    with _seeded(seed) as random_state:
        return library.get_interval_estimates(score_dict, func, reps=reps, random_state=random_state)


def iqm_ci95(runs: Mapping[str, Sequence[float]], reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, Interval]:
    """Interquartile mean of each agent's runs (one score per training seed) with rliable's
    stratified-bootstrap 95% CI; an agent with fewer than two finite runs gets ``(x, nan, nan)``."""
    library, metrics = _rliable()
    out: dict[str, Interval] = {}
    for name, values in runs.items():
        scores = _runs(values)
        if len(scores) < 2:
            value = float(scores[0, 0]) if len(scores) else math.nan
            out[name] = Interval(value, math.nan, math.nan)
            continue
        points, intervals = _interval_estimates(library, {name: scores}, lambda x: np.array([metrics.aggregate_iqm(x)]),
                                                reps, seed)
        out[name] = Interval(float(points[name][0]), float(intervals[name][0, 0]), float(intervals[name][1, 0]))
    return out


def probability_of_improvement(runs_x: Sequence[float], runs_y: Sequence[float], reps: int = BOOTSTRAP_REPS,
                               seed: int = 0) -> Interval:
    """P(X > Y): the chance that a run of X scores above a run of Y (ties count half; the
    Mann-Whitney statistic), with rliable's stratified-bootstrap 95% CI over both sets of runs."""
    x, y = _runs(runs_x), _runs(runs_y)
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"probability_of_improvement needs runs on both sides, got {len(x)} and {len(y)}")
    library, metrics = _rliable()
    if len(x) < 2 or len(y) < 2:
        return Interval(float(metrics.probability_of_improvement(x, y)), math.nan, math.nan)
    points, intervals = _interval_estimates(library, {"x,y": (x, y)}, metrics.probability_of_improvement, reps, seed)
    low, high = np.asarray(intervals["x,y"]).ravel()
    return Interval(float(points["x,y"]), float(low), float(high))


@dataclass(frozen=True)
class PerformanceProfile:
    """Fraction of each agent's runs scoring above each threshold ``tau``, with 95% CI bands."""

    taus: np.ndarray
    fractions: dict[str, np.ndarray]
    lows: dict[str, np.ndarray]
    highs: dict[str, np.ndarray]


PROFILE_REPS = 500
"""bootstrap resamples of a profile's bands: rliable evaluates the profile in Python once per threshold,
agent and resample, so 2,000 resamples of 9 agents at 51 thresholds take about 10 s"""


def performance_profile(runs: Mapping[str, Sequence[float]], taus: np.ndarray | None = None, num_taus: int = 51,
                        reps: int = PROFILE_REPS, seed: int = 0) -> PerformanceProfile:
    """rliable's run-score distribution ``P(score > tau)`` per agent, on ``taus`` (default: ``num_taus``
    thresholds spanning every run's score)."""
    scores = {name: _runs(values) for name, values in runs.items() if len(_runs(values))}
    if not scores:
        raise ValueError("performance_profile needs at least one finite run score")
    if taus is None:
        every = np.concatenate([s.ravel() for s in scores.values()])
        low, high = float(every.min()), float(every.max())
        pad = 0.05 * (high - low) or 1.0
        taus = np.linspace(low - pad, high + pad, num_taus)
    library, _ = _rliable()
    with _seeded(seed):
        fractions, cis = library.create_performance_profile(scores, taus, reps=reps)
    return PerformanceProfile(np.asarray(taus, dtype=np.float64), {k: np.asarray(v) for k, v in fractions.items()},
                              {k: np.asarray(v[0]) for k, v in cis.items()}, {k: np.asarray(v[1]) for k, v in cis.items()})


def paired_bootstrap_ci95(treatment: np.ndarray, control: np.ndarray, reps: int = BOOTSTRAP_REPS,
                          seed: int = 0) -> Interval:
    """Mean paired difference ``treatment - control`` over users with a percentile-bootstrap 95% CI
    (users resampled; ``arch.bootstrap.IIDBootstrap``).

    2-D inputs are ``(seeds, users)`` of the same users: each user's difference is averaged over the
    seeds first, so a user counts once however many seeds met them.
    """
    t, c = np.asarray(treatment, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if t.shape != c.shape or t.size == 0:
        raise ValueError(f"paired outcomes must cover the same users: shapes {t.shape} and {c.shape}")
    diff = (t - c).mean(axis=0) if t.ndim == 2 else t - c
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        value = float(diff.mean()) if len(diff) else math.nan
        return Interval(value, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from arch.bootstrap import IIDBootstrap

        low, high = IIDBootstrap(diff, seed=np.random.default_rng(seed)).conf_int(np.mean, reps=reps,
                                                                                  method="percentile")[:, 0]
    return Interval(float(diff.mean()), float(low), float(high))
