"""What reviewers ask of a comparison: IQM, probability of improvement, paired differences, profiles.

``experiments.compare`` gathers, per agent, one score per run (training seed) and, where the run
kept them (``eval_per_user.npz``), the per-user outcomes with the identity of the evaluation users.
This module turns them into the reporting practice of Agarwal et al. (NeurIPS 2021, rliable):

* the interquartile mean (IQM) over runs with a stratified-bootstrap 95% CI;
* the probability that a run of each agent beats a run of a reference agent, with its CI;
* the paired difference to the reference on the *same users*: per user within each pair of runs,
  then Student-t across pairs (``agents.stats.paired_difference``), only where the evaluation
  users match (same environment settings, evaluation seeds and number of users);
* the performance profile (fraction of runs above each score) as a plot.

The statistics themselves live in ``agents.stats``; this module only chooses what to pair and
how to print it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.registry import PRIVILEGED_MARK, display_name
from agents.stats import (
    BOOTSTRAP_REPS,
    PROFILE_REPS,
    Interval,
    PairedDifference,
    PerformanceProfile,
    iqm_ci95,
    paired_difference,
    performance_profile,
    probability_of_improvement,
    t_ci95,
)

DEFAULT_REFERENCES = ("pctr_greedy", "random")
"""the reference when none is named: the CE start used greedily (what RL fine-tuning must beat), else random"""


@dataclass(frozen=True)
class UserOutcomes:
    """One agent's per-user outcomes in one run, and which users they were."""

    run: Path
    seed: int
    """the run's training seed"""
    users: tuple[Any, ...]
    """what fixes the evaluation users: environment id and settings, evaluation seeds, users per seed"""
    values: np.ndarray


@dataclass(frozen=True)
class RobustRow:
    """The reviewer statistics of one agent against the reference."""

    agent: str
    runs: int
    mean: float
    ci95: float
    iqm: Interval
    improvement: Interval | None = None
    """P(a run of this agent beats a run of the reference)"""
    paired: PairedDifference | None = None
    """this agent minus the reference on the same users; None where no evaluation users match"""
    experiment: str = ""
    """the experiment names of the agent's runs (a column, not part of the row key)"""


@dataclass
class RobustReport:
    metric: str
    reference: str | None
    rows: list[RobustRow]
    profile: PerformanceProfile | None = None
    files: list[Path] = field(default_factory=list)


def choose_reference(agents: Sequence[str], reference: str | None) -> str | None:
    """``reference`` when it is one of ``agents`` (else a ValueError naming them), or the default one present."""
    if reference is not None:
        if reference not in agents:
            raise ValueError(f"--reference {reference!r} is not among the compared agents: {', '.join(sorted(agents))}")
        return reference
    return next((name for name in DEFAULT_REFERENCES if name in agents), None)


def match_pairs(treatment: Sequence[UserOutcomes], control: Sequence[UserOutcomes]
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pairs of per-user arrays of the same users: each treatment run with the control evaluated in the
    same run, else in a run with the same training seed, else the only control run on those users."""
    treated, controls = [], []
    for t in treatment:
        same_users = [c for c in control if c.users == t.users and c.values.shape == t.values.shape]
        chosen = (next((c for c in same_users if c.run == t.run), None)
                  or next((c for c in same_users if c.seed == t.seed), None)
                  or (same_users[0] if len(same_users) == 1 else None))
        if chosen is not None:
            treated.append(t.values)
            controls.append(chosen.values)
    return treated, controls


def robust_report(scores: Mapping[str, Sequence[float]], outcomes: Mapping[str, Sequence[UserOutcomes]],
                  metric: str, reference: str | None = None, reps: int = BOOTSTRAP_REPS,
                  seed: int = 0, experiments: Mapping[str, str] | None = None) -> RobustReport:
    """IQM, probability of improvement over the reference and paired differences, per agent.

    ``scores[agent]`` holds one ``metric`` value per run; ``outcomes[agent]`` the per-user values of
    the runs that kept them; ``experiments[agent]`` the experiment names of its runs (a CSV column).
    """
    experiments = experiments or {}
    reference = choose_reference(list(scores), reference)
    iqms = iqm_ci95(scores, reps=reps, seed=seed)
    rows = []
    for agent, values in scores.items():
        mean, half = t_ci95(values)
        improvement = paired = None
        if reference is not None and agent != reference:
            improvement = probability_of_improvement(values, scores[reference], reps=reps, seed=seed)
            treated, controls = match_pairs(outcomes.get(agent, ()), outcomes.get(reference, ()))
            if treated:
                paired = paired_difference(treated, controls)
        rows.append(RobustRow(agent, sum(math.isfinite(v) for v in values), mean, half, iqms[agent], improvement,
                              paired, experiments.get(agent, "")))
    profile = performance_profile(scores, reps=min(reps, PROFILE_REPS), seed=seed)
    return RobustReport(metric, reference, rows, profile)


# --------------------------------------------------------------------------- output


def _num(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def _interval(interval: Interval | None) -> str:
    if interval is None:
        return ""
    if not math.isfinite(interval.low):
        return _num(interval.value)
    return f"{_num(interval.value)} [{_num(interval.low)}, {_num(interval.high)}]"


def _paired(paired: PairedDifference | None) -> str:
    if paired is None:
        return ""
    pairs = len(paired.per_seed)
    return f"{paired.diff:+.1f} ± {_num(paired.ci95)} ({pairs} pair{'s' if pairs > 1 else ''})"


def markdown(report: RobustReport) -> str:
    """The table of :func:`robust_report` and what its columns mean."""
    ref = report.reference
    ref_name = display_name(ref) if ref else ""
    header = ["agent", "runs", "mean ± 95% CI", "IQM [95% CI]"]
    if ref:
        header += [f"P(agent > {ref_name}) [95% CI]", f"agent − {ref_name}, paired per user"]
    lines = [f"### {report.metric}: robust aggregates" + (f" against {ref_name}" if ref else ""), "",
             "| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in report.rows:
        cells = [display_name(row.agent), str(row.runs),
                 f"{_num(row.mean)} ± {_num(row.ci95)}" if math.isfinite(row.ci95) else _num(row.mean),
                 _interval(row.iqm)]
        if ref:
            cells += ["(reference)" if row.agent == ref else _interval(row.improvement), _paired(row.paired)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "IQM: interquartile mean over runs, stratified-bootstrap 95% CI (rliable). "
              + ("P(agent > reference): chance that a run of the agent scores above a run of the reference "
                 "(0.5 = no difference), bootstrap CI. Paired: per-user difference on the same evaluation "
                 "users, averaged within each pair of runs, then mean ± Student-t 95% CI across pairs "
                 "(empty where the evaluation users differ)." if ref else
                 "No reference agent (name one with --reference) for P(improvement) and paired differences.")]
    if any(display_name(r.agent) != r.agent for r in report.rows):
        lines.append(f"{PRIVILEGED_MARK} privileged (reads the simulator's hidden state or true model).")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("agent", "experiment", "privileged", "runs", "mean", "ci95", "iqm", "iqm_low", "iqm_high", "reference",
               "p_improvement", "p_improvement_low", "p_improvement_high", "paired_diff", "paired_ci95",
               "paired_runs")


def csv_rows(report: RobustReport) -> list[list[Any]]:
    """Rows of ``compare_robust.csv`` (:data:`CSV_COLUMNS`), also the W&B table."""
    out = []
    for row in report.rows:
        poi = row.improvement
        improvement = (poi.value, poi.low, poi.high) if poi else (None, None, None)
        paired = (row.paired.diff, row.paired.ci95, len(row.paired.per_seed)) if row.paired else (None, None, None)
        out.append([row.agent, row.experiment, display_name(row.agent) != row.agent, row.runs, row.mean, row.ci95,
                    row.iqm.value, row.iqm.low, row.iqm.high, report.reference, *improvement, *paired])
    return out


def plot_profile(report: RobustReport, path: Path, title: str = "") -> Path | None:
    """``performance_profile.png``: fraction of runs with ``metric`` above each threshold, 95% CI bands."""
    profile = report.profile
    if profile is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from rliable import plot_utils

    names = list(profile.fractions)
    cmap = plt.get_cmap("tab10")
    colors = {name: cmap(i % 10) for i, name in enumerate(names)}
    styles = {name: "--" if display_name(name) != name else "-" for name in names}
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    cis = {name: np.stack([profile.lows[name], profile.highs[name]]) for name in names}
    plot_utils.plot_performance_profiles(profile.fractions, profile.taus, performance_profile_cis=cis, ax=ax,
                                         colors=colors, linestyles=styles, xlabel=rf"{report.metric} ($\tau$)",
                                         ylabel=r"fraction of runs with score $> \tau$")
    runs = {row.agent: row.runs for row in report.rows}
    ax.legend([Line2D([], [], color=colors[n], linestyle=styles[n]) for n in names],
              [f"{display_name(n)} (n={runs.get(n, 0)})" for n in names], fontsize=8)
    ax.set_title(title or f"performance profile of {report.metric} (95% CI bands, rliable)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
