"""Hyperparameter sweeps in Weights & Biases' own sweep YAML format, run locally or by W&B agents.

One file serves both back-ends (W&B sweep configuration, docs.wandb.ai "Define a sweep
configuration")::

    program: longrec
    command: [${env}, longrec, train, --config, video, ${args_no_hyphens}]
    method: grid                       # grid | random | bayes
    metric: {name: eval/return, goal: maximize}
    parameters:
      kl.coef: {values: [0.0, 0.05]}           # dotted keys = config overrides
      ppo.learning_rate: {min: 1.0e-4, max: 1.0e-3, distribution: log_uniform_values}
      seed: {value: 0}

* ``--backend local``: trials run on this machine in a ``concurrent.futures`` process
  pool (spawn context, one fresh process per trial); grid and random sampling here,
  bayes through Optuna's TPE sampler when ``optuna`` is installed. A failing trial is
  recorded as failed (traceback in its folder) and the sweep carries on; the sweep
  ends with a ranked table (``results.md`` / ``results.csv``).
* ``--backend wandb``: ``wandb.sweep`` registers the same file and ``wandb agent``
  processes run its ``command`` (``longrec train ... key=value``); agents started on
  other machines with the sweep id share the work.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from experiments.config import ConfigError, flatten, load_config

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                 "log_uniform_values", "q_log_uniform_values", "normal", "q_normal", "log_normal")
JOB_NAMES = ("train", "eval", "pretrain")
SWEEP_DIR = Path(__file__).resolve().parent / "sweeps"


class SweepError(ValueError):
    """The sweep file is invalid; the message names the key and what is allowed."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file."""

    path: Path
    """the sweep YAML"""
    method: str
    """grid, random or bayes"""
    metric: str
    """summary metric ranked on (e.g. ``eval/return``)"""
    goal: str
    """maximize or minimize"""
    parameters: dict[str, dict[str, Any]]
    """dotted config key -> W&B parameter spec (``distribution`` filled in)"""
    job: str = "train"
    """``longrec`` command each trial runs (from ``command``)"""
    base_config: str = "default"
    """config the overrides apply to (``--config`` in ``command``)"""
    run_cap: int | None = None
    """W&B's cap on the number of trials"""
    raw: dict[str, Any] = field(default_factory=dict)
    """the file as loaded (what ``wandb.sweep`` receives)"""


@dataclass
class TrialResult:
    """Outcome of one trial."""

    index: int
    params: dict[str, Any]
    status: str
    run_dir: str | None
    value: float | None = None
    error: str | None = None
    duration_s: float = 0.0


# --------------------------------------------------------------------------- parsing


def resolve_sweep_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SWEEP_DIR / f"{path.stem}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
    raise SweepError(f"sweep file {str(name_or_path)!r} not found; shipped sweeps: {', '.join(names)}")


def load_sweep(name_or_path: str | Path, validate_values: bool = True) -> SweepSpec:
    """Parse and validate a sweep file (every listed value is checked against the config types)."""
    path = resolve_sweep_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"sweep file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {path} must hold a mapping")
    known = {"program", "command", "method", "metric", "parameters", "name", "description", "project",
             "entity", "run_cap", "early_terminate"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SweepError(f"sweep file {path}: unknown top-level keys {unknown}; valid: {sorted(known)}")
    method = raw.get("method")
    if method not in METHODS:
        raise SweepError(f"sweep key 'method' must be one of {', '.join(METHODS)}; got {method!r}")
    metric = raw.get("metric") or {}
    if method != "grid" and not metric.get("name"):
        raise SweepError(f"sweep key 'metric.name' is required for method {method} (e.g. eval/return)")
    goal = metric.get("goal", "maximize")
    if goal not in GOALS:
        raise SweepError(f"sweep key 'metric.goal' must be one of {', '.join(GOALS)}; got {goal!r}")
    parameters = _flatten_parameters(raw.get("parameters") or {})
    if not parameters:
        raise SweepError(f"sweep file {path}: 'parameters' is empty")
    job, base = _parse_command(raw.get("command"))
    spec = SweepSpec(path=path, method=method, metric=metric.get("name", "eval/return"), goal=goal,
                     parameters=parameters, job=job, base_config=base, run_cap=raw.get("run_cap"), raw=raw)
    if validate_values:
        _validate_values(spec)
    return spec


def _flatten_parameters(params: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, spec in params.items():
        name = f"{prefix}{key}"
        if not isinstance(spec, Mapping):
            raise SweepError(f"sweep parameter {name!r} must be a mapping like {{values: [...]}}, got {spec!r}")
        if "parameters" in spec:  # W&B nested parameters
            out.update(_flatten_parameters(spec["parameters"], name + "."))
            continue
        out[name] = _normalise_param(name, dict(spec))
    return out


def _normalise_param(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    dist = spec.get("distribution")
    if dist is None:
        if "value" in spec:
            dist = "constant"
        elif "values" in spec:
            dist = "categorical"
        elif "min" in spec and "max" in spec:
            ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        elif "mu" in spec or "sigma" in spec:
            dist = "normal"
        else:
            raise SweepError(f"sweep parameter {name!r} needs one of value, values, min/max "
                             f"(or a distribution); got keys {sorted(spec)}")
    if dist not in DISTRIBUTIONS:
        raise SweepError(f"sweep parameter {name!r}: distribution {dist!r} not supported; "
                         f"supported: {', '.join(DISTRIBUTIONS)}")
    needs = {"constant": ("value",), "categorical": ("values",)}.get(
        dist, ("mu", "sigma") if "normal" in dist else ("min", "max"))
    missing = [k for k in needs if k not in spec and k not in ("mu", "sigma")]
    if missing:
        raise SweepError(f"sweep parameter {name!r} ({dist}) needs {', '.join(needs)}; missing {missing}")
    if dist == "categorical" and (not isinstance(spec["values"], list) or not spec["values"]):
        raise SweepError(f"sweep parameter {name!r}: 'values' must be a non-empty list")
    if "min" in spec and "max" in spec and not spec["min"] <= spec["max"]:
        raise SweepError(f"sweep parameter {name!r}: min={spec['min']} > max={spec['max']}")
    if dist in ("log_uniform_values", "q_log_uniform_values") and spec["min"] <= 0:
        raise SweepError(f"sweep parameter {name!r}: {dist} needs min > 0; got {spec['min']}")
    spec["distribution"] = dist
    return spec


def _parse_command(command: Any) -> tuple[str, str]:
    """(job, base config) from ``[${env}, longrec, <job>, --config, <name>, ${args_no_hyphens}]``."""
    if command is None:
        return "train", "default"
    if not isinstance(command, list):
        raise SweepError(f"sweep key 'command' must be a list, got {command!r}")
    words = [str(w) for w in command]
    job = next((w for w in words if w in JOB_NAMES), "train")
    base = "default"
    for flag in ("--config", "-c"):
        if flag in words and words.index(flag) + 1 < len(words):
            base = words[words.index(flag) + 1]
    for word in words:
        if word.startswith("--config="):
            base = word.split("=", 1)[1]
    return job, base


def overrides_of(params: Mapping[str, Any]) -> list[str]:
    """``{"kl.coef": 0.1}`` -> ``["kl.coef=0.1"]`` (JSON values are valid YAML)."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def _validate_values(spec: SweepSpec) -> None:
    """Every key exists and every listed value type-checks, before any trial starts."""
    for key, param in spec.parameters.items():
        dist = param["distribution"]
        if dist == "constant":
            samples = [param["value"]]
        elif dist == "categorical":
            samples = list(param["values"])
        elif dist == "int_uniform":
            samples = [int(param["min"]), int(param["max"])]
        elif "min" in param:
            samples = [float(param["min"])]
        else:
            samples = [float(param.get("mu", 0.0))]
        for value in samples:
            try:
                load_config(spec.base_config, overrides_of({key: value}))
            except ConfigError as exc:
                raise SweepError(f"sweep parameter {key!r}={value!r}: {exc}") from None


# --------------------------------------------------------------------------- sampling


def grid_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """Cartesian product of every parameter's values (W&B's grid order: first key varies slowest)."""
    axes = []
    for key, param in spec.parameters.items():
        dist = param["distribution"]
        if dist == "constant":
            axes.append([param["value"]])
        elif dist == "categorical":
            axes.append(list(param["values"]))
        elif dist == "int_uniform":
            axes.append(list(range(int(param["min"]), int(param["max"]) + 1)))
        elif dist == "q_uniform":
            q = float(param.get("q", 1.0))
            axes.append(list(np.round(np.arange(param["min"], param["max"] + q / 2, q) / q) * q))
        else:
            raise SweepError(f"method grid needs discrete parameters; {key!r} has distribution {dist} "
                             "(use values, value, int_uniform or q_uniform; or method random/bayes)")
    keys = list(spec.parameters)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]


def sample_param(param: Mapping[str, Any], rng: np.random.Generator) -> Any:
    """One draw from a W&B parameter spec."""
    dist = param["distribution"]
    if dist == "constant":
        return param["value"]
    if dist == "categorical":
        values = param["values"]
        p = param.get("probabilities")
        return values[int(rng.choice(len(values), p=p))]
    lo, hi = param.get("min"), param.get("max")
    q = param.get("q", 1.0)
    if dist == "int_uniform":
        return int(rng.integers(int(lo), int(hi) + 1))
    if dist == "uniform":
        return float(rng.uniform(lo, hi))
    if dist == "q_uniform":
        return float(np.round(rng.uniform(lo, hi) / q) * q)
    if dist == "log_uniform":  # min/max are natural-log exponents
        return float(math.exp(rng.uniform(lo, hi)))
    if dist == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if dist == "q_log_uniform_values":
        return float(np.round(math.exp(rng.uniform(math.log(lo), math.log(hi))) / q) * q)
    mu, sigma = float(param.get("mu", 0.0)), float(param.get("sigma", 1.0))
    if dist == "normal":
        return float(rng.normal(mu, sigma))
    if dist == "q_normal":
        return float(np.round(rng.normal(mu, sigma) / q) * q)
    if dist == "log_normal":
        return float(math.exp(rng.normal(mu, sigma)))
    raise SweepError(f"distribution {dist!r} not supported")  # pragma: no cover


def random_trials(spec: SweepSpec, count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{k: sample_param(p, rng) for k, p in spec.parameters.items()} for _ in range(count)]


def optuna_suggest(trial: Any, key: str, param: Mapping[str, Any]) -> Any:
    """Map a W&B parameter spec onto an Optuna suggestion (bayes method)."""
    dist = param["distribution"]
    if dist == "constant":
        return param["value"]
    if dist == "categorical":
        return trial.suggest_categorical(key, list(param["values"]))
    if dist == "int_uniform":
        return trial.suggest_int(key, int(param["min"]), int(param["max"]))
    if dist in ("uniform", "q_uniform"):
        step = param.get("q") if dist == "q_uniform" else None
        return trial.suggest_float(key, float(param["min"]), float(param["max"]), step=step)
    if dist in ("log_uniform_values", "q_log_uniform_values"):
        return trial.suggest_float(key, float(param["min"]), float(param["max"]), log=True)
    if dist == "log_uniform":
        return math.exp(trial.suggest_float(key + ".log", float(param["min"]), float(param["max"])))
    raise SweepError(f"method bayes (local, Optuna) does not support distribution {dist!r} for {key!r}; "
                     "use uniform / log_uniform_values / int_uniform / values")


# --------------------------------------------------------------------------- local backend


@dataclass(frozen=True)
class TrialSpec:
    """What a worker process needs to run one trial (picklable)."""

    index: int
    params: dict[str, Any]
    base_config: str
    overrides: tuple[str, ...]
    job: str
    sweep_dir: str
    metric: str


def _init_worker(threads: int) -> None:
    # before torch is imported in the worker: each trial gets its share of the cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")


def run_trial(trial: TrialSpec) -> TrialResult:
    """Run one trial in this process; never raises (a failure is a failed TrialResult)."""
    from experiments.run import Run, run_name

    start = time.time()
    run = None
    try:
        cfg = load_config(trial.base_config, [*trial.overrides, *overrides_of(trial.params)])
        name = f"trial-{trial.index:03d}__{run_name(cfg)}"
        job_type = trial.job if ":" not in trial.job else "trial"
        run = Run.create(cfg, job_type=job_type, root=trial.sweep_dir, name=name)
        job = resolve_job(trial.job)
        with run:
            job(cfg, run)
        value = metric_value(run.path, trial.metric)
        return TrialResult(trial.index, trial.params, "finished", str(run.path), value,
                           duration_s=time.time() - start)
    except BaseException as exc:  # a trial's failure is data, not the end of the sweep
        text = traceback.format_exc()
        if run is None:  # failed before the run folder existed (e.g. a config error): keep the traceback anyway
            folder = Path(trial.sweep_dir) / f"trial-{trial.index:03d}__failed"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(text)
            run_dir = str(folder)
        else:
            run_dir = str(run.path)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return TrialResult(trial.index, trial.params, "failed", run_dir, None,
                           f"{type(exc).__name__}: {exc}", time.time() - start)


def resolve_job(job: str) -> Callable[..., Any]:
    """``train`` / ``eval`` / ``pretrain`` (``experiments.jobs.JOBS``), or ``package.module:function``."""
    from experiments.jobs import JOBS

    if job in JOBS:
        return JOBS[job]
    module_name, sep, attr = job.partition(":")
    if not sep:
        raise SweepError(f"job {job!r} is neither one of {', '.join(JOBS)} nor 'module:function'")
    import importlib

    return getattr(importlib.import_module(module_name), attr)


def metric_value(run_dir: str | Path, metric: str) -> float | None:
    """The sweep metric of a run: ``summary.json`` metrics, else any summary key, else its last logged value."""
    from experiments.run import read_json, read_metrics

    summary = read_json(Path(run_dir) / "summary.json")
    for source in (summary.get("metrics", {}), flatten(summary)):
        if metric in source and isinstance(source[metric], (int, float)):
            return float(source[metric])
    for row in reversed(read_metrics(run_dir)):
        if isinstance(row.get(metric), (int, float)):
            return float(row[metric])
    return None


def run_local_sweep(sweep: str | Path | SweepSpec, workers: int = 1, count: int | None = None,
                    out_dir: str | Path | None = None, overrides: Sequence[str] = (), seed: int = 0,
                    runs_dir: str | Path = "runs", progress: bool = True, job: str | None = None,
                    on_result: Callable[[TrialResult], None] | None = None) -> tuple[Path, list[TrialResult]]:
    """Run a sweep in a pool of ``workers`` processes; returns the sweep folder and the results.

    ``job`` replaces the file's command (``train``/``eval``/``pretrain``, or ``module:function`` taking
    ``(cfg, run)``: e.g. a synthetic objective in tests). The folder holds ``sweep.yaml`` (copy), one run folder per trial, ``trials.jsonl``
    (appended as trials end) and the ranked ``results.md`` / ``results.csv``.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    if workers < 1:
        raise SweepError(f"--workers must be >= 1; got {workers}")
    load_config(spec.base_config, list(overrides))  # bad extra overrides fail before any trial
    if job is not None:
        resolve_job(job)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = Path(out_dir) if out_dir else Path(runs_dir) / "sweeps" / f"{spec.path.stem}__{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    if spec.path.resolve() != (folder / "sweep.yaml").resolve():
        shutil.copyfile(spec.path, folder / "sweep.yaml")
    extra = (f"logging.group={json.dumps(spec.raw.get('name') or spec.path.stem)}", *overrides)
    cap = count or spec.run_cap
    if spec.method == "grid":
        trials = grid_trials(spec)[:cap] if cap else grid_trials(spec)
    elif spec.method == "random":
        if not cap:
            raise SweepError("method random needs a trial count: --count N (or run_cap in the sweep file)")
        trials = random_trials(spec, cap, seed)
    else:
        if not cap:
            raise SweepError("method bayes needs a trial count: --count N (or run_cap in the sweep file)")
        trials = None
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    results: list[TrialResult] = []
    log_path = folder / "trials.jsonl"
    total = len(trials) if trials is not None else int(cap)
    bar = _bar(total, progress)

    def record(result: TrialResult) -> None:
        results.append(result)
        with open(log_path, "a") as fh:
            fh.write(json.dumps(result.__dict__) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{sum(r.status == 'failed' for r in results)} failed")
        if on_result is not None:
            on_result(result)

    def make_trial(index: int, params: dict[str, Any]) -> TrialSpec:
        return TrialSpec(index, params, spec.base_config, extra, job or spec.job, str(folder), spec.metric)

    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads,), max_tasks_per_child=1) as pool:
        if trials is not None:
            futures = {pool.submit(run_trial, make_trial(i, p)): (i, p) for i, p in enumerate(trials)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    record(_result_of(future, *futures[future], folder))
        else:
            _run_bayes(spec, pool, int(cap), workers, seed, make_trial, record, folder)
    if bar is not None:
        bar.close()
    results.sort(key=lambda r: r.index)
    write_results(spec, results, folder)
    return folder, results


def _result_of(future: Future, index: int, params: dict[str, Any], folder: Path) -> TrialResult:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        return TrialResult(index, params, "failed", None, None,
                           f"worker process died (killed or out of memory?): {exc}")


def _run_bayes(spec: SweepSpec, pool: ProcessPoolExecutor, count: int, workers: int, seed: int,
               make_trial: Callable[[int, dict[str, Any]], TrialSpec], record: Callable[[TrialResult], None],
               folder: Path) -> None:
    try:
        import optuna
    except ImportError:
        raise SweepError("method bayes with --backend local needs Optuna (pip install optuna); "
                         "or run it with --backend wandb, or use method random") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if spec.goal == "maximize" else "minimize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    running: dict[Future, tuple[Any, int, dict[str, Any]]] = {}
    started = 0
    while started < count or running:
        while started < count and len(running) < workers:
            trial = study.ask()
            params = {k: optuna_suggest(trial, k, p) for k, p in spec.parameters.items()}
            running[pool.submit(run_trial, make_trial(started, params))] = (trial, started, params)
            started += 1
        done, _ = wait(set(running), return_when=FIRST_COMPLETED)
        for future in done:
            trial, index, params = running.pop(future)
            result = _result_of(future, index, params, folder)
            if result.status == "finished" and result.value is not None:
                study.tell(trial, result.value)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            record(result)


def rank(results: Sequence[TrialResult], goal: str) -> list[TrialResult]:
    """Finished trials best first (by the metric), then finished without the metric, then failed."""
    sign = -1.0 if goal == "maximize" else 1.0

    def key(r: TrialResult) -> tuple[int, float, int]:
        if r.status != "finished":
            return (2, 0.0, r.index)
        if r.value is None or not math.isfinite(r.value):
            return (1, 0.0, r.index)
        return (0, sign * r.value, r.index)

    return sorted(results, key=key)


def write_results(spec: SweepSpec, results: Sequence[TrialResult], folder: Path) -> str:
    """Ranked ``results.md`` and ``results.csv``; returns the Markdown."""
    ranked = rank(results, spec.goal)
    keys = list(spec.parameters)
    varying = [k for k in keys if spec.parameters[k]["distribution"] != "constant"] or keys
    header = ["rank", "trial", "status", spec.metric, *varying, "run"]
    lines = [f"## sweep {spec.path.name}: {spec.method}, {spec.goal} {spec.metric}, "
             f"{sum(r.status == 'finished' for r in results)}/{len(results)} finished\n",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * 2 + [":---", "---:"]
                                                            + ["---:"] * len(varying) + [":---"]) + "|"]
    rows = []
    for position, r in enumerate(ranked, 1):
        value = "" if r.value is None else f"{r.value:.4g}"
        status = r.status if r.status == "finished" else f"failed: {(r.error or '')[:60]}"
        run = Path(r.run_dir).name if r.run_dir else ""
        lines.append("| " + " | ".join([str(position) if r.status == "finished" else "–", str(r.index), status,
                                        value, *(_cell(r.params.get(k)) for k in varying), run]) + " |")
        rows.append({"rank": position if r.status == "finished" else "", "trial": r.index, "status": r.status,
                     spec.metric: r.value, **{k: r.params.get(k) for k in keys}, "duration_s": round(r.duration_s, 2),
                     "run_dir": r.run_dir, "error": r.error or ""})
    markdown = "\n".join(lines) + "\n"
    (folder / "results.md").write_text(markdown)
    with open(folder / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else header)
        writer.writeheader()
        writer.writerows(rows)
    return markdown


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep trials", unit="trial")


# --------------------------------------------------------------------------- W&B backend


def with_command_overrides(spec: SweepSpec, overrides: Sequence[str]) -> SweepSpec:
    """The spec whose W&B ``command`` passes ``overrides`` to every trial (before the swept ``${args...}``)."""
    if not overrides:
        return spec
    load_config(spec.base_config, list(overrides))  # validate before registering anything
    command = [str(w) for w in spec.raw.get("command") or
               ["${env}", "longrec", spec.job, "--config", spec.base_config, "${args_no_hyphens}"]]
    at = next((i for i, w in enumerate(command) if w.startswith("${args")), len(command))
    raw = dict(spec.raw, command=[*command[:at], *overrides, *command[at:]])
    return dataclasses.replace(spec, raw=raw)


def wandb_sweep_id(sweep: SweepSpec, project: str, entity: str | None) -> str:
    """Register the sweep file with W&B; returns ``entity/project/id``."""
    from experiments.wandb_logging import is_logged_in

    if not is_logged_in():
        raise SweepError("--backend wandb needs a W&B login (run `wandb login`, or set WANDB_API_KEY); "
                         "without one, run the same file with --backend local")
    import wandb

    sweep_id = wandb.sweep(sweep=dict(sweep.raw), project=project, entity=entity)
    if "/" in sweep_id:
        return sweep_id
    entity = entity or wandb.Api().default_entity
    return f"{entity}/{project}/{sweep_id}"


def agent_command(sweep_id: str, count: int | None = None) -> list[str]:
    """The ``wandb agent`` command line (with this interpreter, so the venv's ``longrec`` is used)."""
    return [sys.executable, "-m", "wandb", "agent", *(["--count", str(count)] if count else []), sweep_id]


def run_wandb_agents(sweep_id: str, workers: int, count: int | None = None,
                     popen: Callable[..., Any] = subprocess.Popen) -> int:
    """Start ``workers`` W&B agents on this machine and wait for them; returns the worst exit code."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # `longrec` of this venv
    procs = [popen(agent_command(sweep_id, count), env=env) for _ in range(workers)]
    codes = [proc.wait() for proc in procs]
    return max(codes, default=0)
