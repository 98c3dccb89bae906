"""Compare runs: a Markdown + CSV table (mean and 95% CI per agent and metric) and PNG plots.

The statistics follow the RL reporting practice of Henderson et al. (2018, "Deep RL
that matters") and Agarwal et al. (2021, rliable): several seeds per agent, the
mean with a Student-t 95% confidence interval across seeds, and learning curves
with confidence bands. With one seed, the within-run interval over users that the
evaluator reports (``<metric>_ci95``) is shown instead, and flagged ``n=1``.

Input: run folders (``summary.json`` + ``metrics.jsonl``, see ``experiments.run``) or
any folder holding them (a sweep folder, ``runs/``). Failed or unfinished runs are
left out and listed.

Rows are agents: runs of one agent pool into one row (split further by ``--by`` keys),
runs of different agents never share one. The experiment names of a row's runs (config
``name``) are a column of the tables, not the row key. A requested metric or curve that
none of the runs has is a :class:`CompareError` raised before anything is written.
"""

from __future__ import annotations

import csv
import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.registry import PRIVILEGED_MARK, display_name
from agents.stats import BOOTSTRAP_REPS, t_band95, t_ci95
from experiments import robust
from experiments.config import flatten
from experiments.robust import RobustReport, UserOutcomes
from experiments.run import read_json, read_metrics

MAIN_METRICS = ("return", "retention", "sessions", "ctr", "consumption", "final_satisfaction", "diversity", "coverage",
                "length")
"""Shown first, in this order; bar plots use the first three present: long-term return, retention, CTR."""
BAR_METRICS = ("return", "retention", "sessions", "ctr")
DEFAULT_CURVE = "heldout/return"
FALLBACK_CURVE = "charts/episodic_return"
"""the curve of runs without periodic evaluation, used only when the default curve was asked for"""
CURVE_LABELS = {
    "heldout/return": "long-term return on fixed held-out users",
    "charts/episodic_return": "return of the lives that ended (secondary)",
}
"""axis labels of the learning-curve metrics"""
BOOKKEEPING = ("num_users", "seconds", "env_steps")
"""Numbers in evaluation rows that are not metrics to compare."""


class CompareError(ValueError):
    """Runs cannot be compared (none found, none finished, or different environments)."""


@dataclass(frozen=True)
class AgentStat:
    """Mean and 95% half-width of one metric of one agent over ``n`` runs (seeds)."""

    mean: float
    ci95: float
    n: int


@dataclass
class RunRecord:
    """What compare reads from one run folder."""

    path: Path
    env: str
    label: str
    agent: str
    seed: int
    status: str
    metrics: dict[str, float]
    agents: dict[str, dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)
    experiment: str = ""
    """the experiment name (config ``name``); empty for an unnamed run"""


@dataclass
class Comparison:
    """Aggregated statistics plus the files written."""

    env: str
    stats: dict[str, dict[str, AgentStat]]
    metrics: list[str]
    records: list[RunRecord]
    skipped: list[tuple[Path, str]]
    markdown: str = ""
    experiments: dict[str, str] = field(default_factory=dict)
    """``{row label: experiment names of its runs}`` (:func:`experiment_names`)"""
    robust: RobustReport | None = None
    """IQM, probability of improvement, paired differences and the performance profile (``experiments.robust``)"""
    files: list[Path] = field(default_factory=list)
    wandb_url: str | None = None


# --------------------------------------------------------------------------- loading


def find_runs(paths: Iterable[str | Path], max_depth: int = 3) -> list[Path]:
    """Run folders (holding ``summary.json``) at or below each path, sorted, without duplicates."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CompareError(f"{str(path)!r} does not exist")
        if (path / "summary.json").exists():
            found.append(path)
            continue
        for depth in range(1, max_depth + 1):
            found.extend(p.parent for p in sorted(path.glob("/".join(["*"] * depth) + "/summary.json")))
    return sorted(dict.fromkeys(p.resolve() for p in found))


def load_record(path: Path, by: str = "agent") -> RunRecord:
    """One run folder; its row label is the agent plus the ``by`` keys (see :func:`_label`)."""
    summary = read_json(path / "summary.json")
    try:
        import yaml

        config = flatten(yaml.safe_load((path / "config.yaml").read_text()) or {})
    except OSError:
        config = {}
    agent = str(summary.get("agent", config.get("agent", "?")))
    experiment = _experiment_name(agent, config, summary)
    label = _label(agent, by, config, experiment, path)
    if summary.get("job_type") == "pretrain":  # its metrics are the pretraining's, not the agent's evaluation
        label += " (pretrain)"
    return RunRecord(path=path, env=str(summary.get("env", config.get("env.id", "?"))), label=label, agent=agent,
                     seed=int(summary.get("seed", config.get("seed", 0)) or 0),
                     status=str(summary.get("status", "?")),
                     metrics={k: float(v) for k, v in dict(summary.get("metrics", {})).items() if _is_number(v)},
                     agents={a: {k: float(v) for k, v in dict(m).items() if _is_number(v)}
                             for a, m in dict(summary.get("agents", {}) or {}).items()},
                     config=config, experiment=experiment)


EXPERIMENT_KEYS = ("experiment", "name")
"""``--by`` keys that split rows by experiment name"""


def _experiment_name(agent: str, config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    if "name" in config:
        return str(config["name"] or "")
    # without config.yaml: summary.json records an unnamed run's experiment as its agent
    name = str(summary.get("experiment") or "")
    return "" if name == agent else name


def _label(agent: str, by: str, config: Mapping[str, Any], experiment: str, path: Path) -> str:
    """The row key: the agent, then the ``by`` keys that split its runs, e.g. ``ce_ppo (kl.coef=0.1)``.

    It always starts with the agent's name, so runs of different agents never share a row and a run's
    own row cannot be taken for the row of an agent it evaluated beside it (those are bare agent names)."""
    if by == "run":
        return f"{agent} (run={path.name})"
    parts = []
    defaults = _default_flat_config()
    for key in (k.strip() for k in by.split(",")):
        if key == "agent":
            continue
        if key in EXPERIMENT_KEYS:
            parts.append(f"{key}={experiment}")
            continue
        if key not in config and key not in defaults:
            raise CompareError(f"--by {key!r}: not a config key of run {path.name}; e.g. agent, experiment, seed, "
                               f"kl.coef, ppo.learning_rate")
        # a run written before the key existed ran with what is now its default
        parts.append(f"{key}={config.get(key, defaults.get(key))}")
    return f"{agent} ({', '.join(parts)})" if parts else agent


@functools.cache
def _default_flat_config() -> dict[str, Any]:
    from experiments.config import ExperimentConfig

    return ExperimentConfig().flat()


def load_records(paths: Iterable[str | Path], by: str = "agent",
                 allow_mixed_envs: bool = False) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """Finished runs under ``paths`` and the (path, reason) of those left out; raises CompareError."""
    paths = list(paths)
    run_dirs = find_runs(paths)
    if not run_dirs:
        raise CompareError(f"no runs found under {', '.join(map(str, paths))} "
                           "(a run folder holds summary.json; `longrec train` writes them under runs/)")
    records, skipped = [], []
    for run_dir in run_dirs:
        record = load_record(run_dir, by)
        if record.status != "finished":
            skipped.append((run_dir, record.status))
            continue
        if not record.metrics and not record.agents:
            skipped.append((run_dir, "no metrics in summary.json"))
            continue
        records.append(record)
    if not records:
        reasons = ", ".join(f"{p.name}: {why}" for p, why in skipped)
        raise CompareError(f"none of the {len(run_dirs)} run(s) found is finished with metrics ({reasons})")
    envs = defaultdict(list)
    for record in records:
        envs[record.env].append(record.path.name)
    if len(envs) > 1 and not allow_mixed_envs:
        detail = "; ".join(f"{env}: {len(names)} run(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                           for env, names in envs.items())
        raise CompareError(f"runs are incompatible: they use different environments ({detail}). Compare runs of "
                           "one environment (pass their folders), or add --allow-mixed-envs")
    return records, skipped


# --------------------------------------------------------------------------- statistics


def _strip(name: str) -> str:
    return name[len("eval/"):] if name.startswith("eval/") else name


def agent_tables(record: RunRecord) -> list[tuple[str, str, dict[str, float]]]:
    """``(label, agent name, metrics)`` of the run's own agent and of each agent it evaluated beside it.

    The agents evaluated beside it are rows by their name alone (not split by ``--by`` keys); an entry
    for the run's own agent is left out (its row is the run's own)."""
    tables = [(record.label, record.agent, {_strip(k): v for k, v in record.metrics.items()})]
    return tables + [(name, name, row) for name, row in record.agents.items() if name != record.agent]


def run_values(records: Sequence[RunRecord]) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, float]]]:
    """``({label: {metric: one value per run}}, {label: {metric: the within-run CI of the last run}})``."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    within: dict[str, dict[str, float]] = defaultdict(dict)
    for record in records:
        for label, _, row in agent_tables(record):
            for metric, value in row.items():
                if metric in BOOKKEEPING or metric.endswith("_seed_ci95"):
                    continue
                if metric.endswith("_ci95"):
                    within[label][metric[:-5]] = value
                else:
                    values[label][metric].append(value)
    return values, within


def experiment_names(records: Sequence[RunRecord]) -> dict[str, str]:
    """``{label: the experiment names of the runs in that row}``, comma-separated in the runs' order."""
    names: dict[str, dict[str, None]] = defaultdict(dict)
    for record in records:
        if record.experiment:
            for label, _, _ in agent_tables(record):
                names[label].setdefault(record.experiment, None)
    return {label: ", ".join(found) for label, found in names.items()}


def aggregate(records: Sequence[RunRecord]) -> dict[str, dict[str, AgentStat]]:
    """``{agent label: {metric: AgentStat}}`` over runs: the run's own agent and the agents it evaluated."""
    return stats_of(*run_values(records))


def stats_of(values: Mapping[str, Mapping[str, list[float]]],
             within: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, AgentStat]]:
    """:func:`aggregate` from :func:`run_values`' output."""
    stats: dict[str, dict[str, AgentStat]] = {}
    for label, metrics in values.items():
        stats[label] = {}
        for metric, xs in metrics.items():
            mean, half = t_ci95(xs)
            if len(xs) == 1 and metric in within.get(label, {}):
                half = within[label][metric]
            stats[label][metric] = AgentStat(mean, half, len(xs))
    return stats


USER_KEYS = ("env.id", "env.kwargs.", "eval.seeds", "eval.num_users")
"""config keys (or prefixes) that fix which users an evaluation meets"""


def user_outcomes(records: Sequence[RunRecord], metric: str) -> dict[str, list[UserOutcomes]]:
    """``{label: per-user values of metric in each run that kept them}`` (``eval_per_user.npz``)."""
    from experiments.jobs import PER_USER_FILE, load_per_user

    out: dict[str, list[UserOutcomes]] = defaultdict(list)
    for record in records:
        if not (record.path / PER_USER_FILE).exists():
            continue
        per_user = load_per_user(record.path)
        users = tuple(sorted((k, str(v)) for k, v in record.config.items() if k.startswith(USER_KEYS)))
        for label, name, _ in agent_tables(record):
            if f"{name}/{metric}" in per_user:
                out[label].append(UserOutcomes(record.path, record.seed, users, per_user[f"{name}/{metric}"]))
    return dict(out)


def metric_order(stats: Mapping[str, Mapping[str, AgentStat]]) -> list[str]:
    names = {m for row in stats.values() for m in row}
    main = [m for m in MAIN_METRICS if m in names]
    return main + sorted(names - set(main), key=lambda m: (m.count("/"), m))


def sort_agents(stats: Mapping[str, Mapping[str, AgentStat]], metric: str | None) -> list[str]:
    def key(label: str) -> tuple[float, str]:
        stat = stats[label].get(metric) if metric else None
        return (-(stat.mean if stat is not None and math.isfinite(stat.mean) else -math.inf), label)

    return sorted(stats, key=key)


# --------------------------------------------------------------------------- tables


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 1000 else f"{x:.0f}"


def markdown_table(stats: Mapping[str, Mapping[str, AgentStat]], metrics: Sequence[str],
                   agents: Sequence[str], experiments: Mapping[str, str] | None = None) -> str:
    """One row per agent label: runs ``n`` and mean ± 95% CI per metric; an ``experiment`` column after the
    agent when any of the rows' runs was named (``experiments``: :func:`experiment_names`)."""
    experiments = experiments or {}
    named = any(experiments.get(agent) for agent in agents)
    header = ["agent", *(["experiment"] if named else []), "n", *metrics]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---", *([":---"] if named else []), "---:"] + ["---:"] * len(metrics)) + "|"]
    for agent in agents:
        row = stats[agent]
        n = max((s.n for s in row.values()), default=0)
        cells = []
        for metric in metrics:
            stat = row.get(metric)
            if stat is None:
                cells.append("")
            elif math.isfinite(stat.ci95):
                cells.append(f"{_fmt(stat.mean)} ± {_fmt(stat.ci95)}")
            else:
                cells.append(_fmt(stat.mean))
        names = [experiments.get(agent, "")] if named else []
        lines.append("| " + " | ".join([display_name(agent), *names, str(n), *cells]) + " |")
    if any(display_name(agent) != agent for agent in agents):
        lines.append(f"\n{PRIVILEGED_MARK} privileged: reads the simulator's hidden state or true model (a reference, "
                     "not a deployable recommender)")
    return "\n".join(lines)


CSV_COLUMNS = ("agent", "experiment", "metric", "mean", "ci95", "n")
"""columns of ``compare.csv`` (and of the W&B table ``compare/agents``)"""


def write_csv(stats: Mapping[str, Mapping[str, AgentStat]], metrics: Sequence[str], agents: Sequence[str],
              path: Path, experiments: Mapping[str, str] | None = None) -> Path:
    experiments = experiments or {}
    rows = [[agent, experiments.get(agent, ""), metric, repr(stat.mean),
             "" if not math.isfinite(stat.ci95) else repr(stat.ci95), stat.n]
            for agent in agents for metric in metrics if (stat := stats[agent].get(metric)) is not None]
    return write_rows(path, CSV_COLUMNS, rows)


def write_rows(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def agent_rows_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of one run's per-agent evaluation rows (``<metric>_ci95`` = within-run half-width)."""
    stats = {name: {m: AgentStat(v, row.get(f"{m}_ci95", math.nan), 1) for m, v in row.items()
                    if not m.endswith("_ci95") and m not in BOOKKEEPING} for name, row in rows.items()}
    metrics = metric_order(stats)
    table = markdown_table(stats, metrics, sort_agents(stats, metrics[0] if metrics else None))
    return table.replace("| agent | n |", "| agent | runs |")


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write (making the folder) and close a matplotlib figure; returns ``path``."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def plot_bars(stats: Mapping[str, Mapping[str, AgentStat]], path: Path, metrics: Sequence[str] = BAR_METRICS,
              title: str = "") -> Path | None:
    """One panel per metric present (long-term return, retention, CTR): a bar per agent with 95% CI."""
    present = [m for m in metrics if any(m in row for row in stats.values())]
    if not present:
        return None
    plt = _pyplot()
    agents = sort_agents(stats, present[0])
    ncols = len(present) if len(present) <= 2 else 2
    nrows = -(-len(present) // ncols)
    width = max(4.0, 0.8 * len(agents) + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    colors = plt.get_cmap("tab10")
    for ax, metric in zip(axes.flat, present, strict=False):
        names = [a for a in agents if metric in stats[a]]
        means = [stats[a][metric].mean for a in names]
        errs = [stats[a][metric].ci95 if math.isfinite(stats[a][metric].ci95) else 0.0 for a in names]
        ax.bar(range(len(names)), means, yerr=errs, capsize=4,
               color=[colors(agents.index(a) % 10) for a in names])
        ax.set_xticks(range(len(names)), [display_name(n) for n in names], rotation=30, ha="right")
        ax.set_title({"return": "long-term return", "retention": "retention", "sessions": "sessions per user",
                      "ctr": "CTR"}.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


Curve = tuple[np.ndarray, np.ndarray, np.ndarray]
"""one run's ``(steps, values, 95% CI half-widths)``; the half-widths are NaN unless ``<metric>_ci95`` was logged"""


def curve_data(records: Sequence[RunRecord], metric: str) -> dict[str, list[Curve]]:
    """``{label: [(steps, values, ci95) per run]}`` of one metric logged with a step."""
    curves: dict[str, list[Curve]] = defaultdict(list)
    for record in records:
        points = [(row["step"], row[metric], row.get(f"{metric}_ci95", math.nan)) for row in read_metrics(record.path)
                  if row.get("step") is not None and _is_number(row.get(metric))]
        if points:
            steps, vals, halves = map(np.asarray, zip(*sorted(points), strict=True))
            curves[record.label].append((steps.astype(float), vals.astype(float), halves.astype(float)))
    return dict(curves)


def band(runs: Sequence[Curve], num_points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and t-CI band of several curves on a common step grid (the range all runs cover); one run
    keeps its own logged CI (over its evaluation users)."""
    if len(runs) == 1:
        steps, vals, halves = runs[0]
        return steps, vals, halves
    lo = max(s[0] for s, _, _ in runs)
    hi = min(s[-1] for s, _, _ in runs)
    if hi <= lo:
        lo, hi = min(s[0] for s, _, _ in runs), max(s[-1] for s, _, _ in runs)
    grid = np.linspace(lo, hi, num_points)
    mean, half = t_band95(np.stack([np.interp(grid, s, v) for s, v, _ in runs]))
    return grid, mean, half


def logged_metrics(records: Sequence[RunRecord]) -> list[str]:
    """The metrics.jsonl keys that the runs logged with a step and a number (curve candidates), sorted."""
    names = {key for record in records for row in read_metrics(record.path) if row.get("step") is not None
             for key, value in row.items() if key not in ("step", "time") and not key.endswith("_ci95")
             and _is_number(value)}
    return sorted(names, key=lambda m: (m.count("/") == 0, m))


def choose_curves(records: Sequence[RunRecord], metric: str) -> tuple[str, dict[str, list[Curve]]]:
    """``(metric plotted, curve_data)``: ``metric``, or for the default one only :data:`FALLBACK_CURVE` when
    no run logged it (then possibly no curves: evaluation runs log none). Raises CompareError when
    another ``metric`` is logged by none of the runs, naming those they logged."""
    curves = curve_data(records, metric)
    if curves:
        return metric, curves
    if metric == DEFAULT_CURVE:
        return FALLBACK_CURVE, curve_data(records, FALLBACK_CURVE)
    available = logged_metrics(records)
    runs = f"{len(records)} run{'s' if len(records) != 1 else ''}"
    raise CompareError(f"--curve-metric {metric!r} is logged by none of the {runs}; available: "
                       + (", ".join(available) or "none (their metrics.jsonl hold no metric logged with a step)"))


def plot_curves(records: Sequence[RunRecord], metric: str, path: Path) -> Path | None:
    """``path``: the learning curves of ``metric`` per label (:func:`plot_curve_data`); None if no run logged it."""
    return plot_curve_data(curve_data(records, metric), metric, path)


def plot_curve_data(curves: Mapping[str, Sequence[Curve]], metric: str, path: Path) -> Path | None:
    """Mean and 95% CI band per label of :func:`curve_data`'s curves against environment steps."""
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for label in sorted(curves):
        steps, mean, half = band(curves[label])
        line, = ax.plot(steps, mean, label=f"{label} (n={len(curves[label])})")
        if np.isfinite(half).any():
            ax.fill_between(steps, mean - half, mean + half, alpha=0.2, color=line.get_color())
    ax.set_xlabel("environment steps")
    ax.set_ylabel(CURVE_LABELS.get(metric, metric))
    seeds = max(len(runs) for runs in curves.values())
    ax.set_title(f"{metric}: mean and 95% CI across seeds" if seeds > 1
                 else f"{metric}" + (": 95% CI over held-out users" if metric == "heldout/return" else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- entry point


def compare(paths: Iterable[str | Path], out_dir: str | Path, by: str = "agent", curve_metric: str = DEFAULT_CURVE,
            bar_metrics: Sequence[str] = BAR_METRICS, allow_mixed_envs: bool = False, metric: str = "return",
            reference: str | None = None, wandb: bool = False, reps: int = BOOTSTRAP_REPS) -> Comparison:
    """Load, aggregate and write ``compare.md``, ``compare.csv``, ``compare_robust.csv`` and ``plots/*.png``
    under ``out_dir`` (and, with ``wandb``, the tables and plots to a W&B run of job type ``compare``).

    Rows are agents, split further by the ``by`` keys (``run``, ``experiment`` or config keys); the
    experiment names of each row's runs are a column. ``metric`` is the score of the robust aggregates
    (IQM, probability of improvement over ``reference``, paired differences, performance profile);
    ``reference`` (an agent or row label) defaults to ``pctr_greedy``, else ``random``; ``reps`` bootstrap
    resamples per interval. ``curve_metric``, ``metric`` and the ``bar_metrics`` (unless the default ones)
    must be logged by at least one run: else a CompareError names the available ones, before ``out_dir``
    is written.
    """
    if reps < 10:
        raise CompareError(f"--bootstrap-reps {reps}: use at least 10 resamples (2000 is the default)")
    records, skipped = load_records(paths, by=by, allow_mixed_envs=allow_mixed_envs)
    values, within = run_values(records)
    stats = stats_of(values, within)
    metrics = metric_order(stats)
    metric = _strip(metric)
    if metric not in metrics:
        raise CompareError(f"--metric {metric!r} is not a metric of these runs; available: {', '.join(metrics)}")
    bar_metrics = _check_bar_metrics(bar_metrics, metrics, len(records))
    curve_metric, curves = choose_curves(records, curve_metric)
    agents = sort_agents(stats, metric)
    experiments = experiment_names(records)
    scores = {label: values[label][metric] for label in agents if metric in stats[label]}
    reference = _resolve_reference(reference, records, scores)
    try:
        report = robust.robust_report(scores, user_outcomes(records, metric), metric, reference, reps=reps,
                                      experiments=experiments)
    except ValueError as exc:
        raise CompareError(str(exc)) from None
    env = records[0].env if len({r.env for r in records}) == 1 else "mixed environments"
    seeds = sorted({r.seed for r in records})
    table = markdown_table(stats, metrics, agents, experiments)
    markdown = (f"## {env}: {len(records)} run(s), seeds {', '.join(map(str, seeds))}\n\n{table}\n\n"
                "mean ± 95% CI (Student t across seeds; with n = 1 the evaluator's CI over users)\n\n"
                + robust.markdown(report))
    if not curves:
        markdown += f"\nno learning curves: none of the runs logged {DEFAULT_CURVE} or {FALLBACK_CURVE}\n"
    if skipped:
        markdown += "\nleft out: " + ", ".join(f"{p.name} ({why})" for p, why in skipped) + "\n"
    result = Comparison(env=env, stats=stats, metrics=metrics, records=records, skipped=skipped, markdown=markdown,
                        experiments=experiments, robust=report)
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown)
    result.files = [out / "compare.md", write_csv(stats, metrics, agents, out / "compare.csv", experiments),
                    write_rows(out / "compare_robust.csv", robust.CSV_COLUMNS, robust.csv_rows(report))]
    for plot in (plot_curve_data(curves, curve_metric, out / "plots" / "learning_curves.png"),
                 plot_bars(stats, out / "plots" / "final_metrics.png", bar_metrics, title=env),
                 robust.plot_profile(report, out / "plots" / "performance_profile.png", title=f"{env}: performance profile of {metric}")):
        if plot is not None:
            result.files.append(plot)
    if wandb:
        result.wandb_url = log_comparison(result, out)
    return result


def _check_bar_metrics(names: Sequence[str], metrics: Sequence[str], runs: int) -> list[str]:
    """The bar-chart metrics (``eval/`` prefix dropped); the default ones plot those present, a name asked
    for that no run has is a CompareError naming the available ones."""
    bars = [_strip(name.strip()) for name in names if name.strip()]
    if tuple(bars) == BAR_METRICS:
        return bars
    missing = [name for name in bars if name not in metrics]
    if not bars or missing:
        what = (f"{', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} a metric of none of the "
                f"{runs} run{'s' if runs != 1 else ''}") if missing else "names no metric"
        raise CompareError(f"--metrics {what}; available: {', '.join(metrics)}")
    return bars


def _resolve_reference(reference: str | None, records: Sequence[RunRecord],
                       scores: Mapping[str, Sequence[float]]) -> str | None:
    """``reference`` as a row label: itself when a row has that label, else the one row of that agent
    (with ``--by`` keys a row label is ``agent (key=value)``); several rows of it is a CompareError."""
    if reference is None or reference in scores:
        return reference
    rows = sorted({label for record in records for label, name, _ in agent_tables(record)
                   if name == reference and label in scores})
    if len(rows) > 1:
        raise CompareError(f"--reference {reference!r} names {len(rows)} rows ({', '.join(rows)}); "
                           "pass one of them")
    return rows[0] if rows else reference  # none: robust.choose_reference names the rows


def log_comparison(result: Comparison, out: Path) -> str | None:
    """The comparison as a W&B run (job type ``compare``; offline unless logged in): both tables and the plots."""
    from experiments.wandb_logging import WandbLogger

    logger = WandbLogger.open(name=f"compare__{out.name}", group="compare", job_type="compare",
                              tags=[result.env.split("/")[-1], "compare"], run_dir=out,
                              config={"runs": [str(r.path) for r in result.records], "metric": result.robust.metric,
                                      "reference": result.robust.reference})
    rows = [[agent, result.experiments.get(agent, ""), metric, stat.mean, stat.ci95, stat.n]
            for agent, row in result.stats.items() for metric, stat in row.items()]
    logger.log_table("compare/agents", CSV_COLUMNS, rows)
    logger.log_table("compare/robust", robust.CSV_COLUMNS, robust.csv_rows(result.robust))
    for path in result.files:
        if path.suffix == ".png":
            logger.log_image(f"compare/{path.stem}", path)
    url = logger.url
    logger.finish()
    return url


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
