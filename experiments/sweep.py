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

* ``--backend local``: trials run on this machine, each in a fresh spawn process, at
  most ``--workers`` at once; grid and random sampling here, bayes through Optuna's TPE
  sampler when ``optuna`` is installed. A failing trial is recorded as failed (traceback
  in its folder), a trial whose process dies (killed, out of memory) as failed with its
  exit code, and the sweep carries on; it ends with a ranked table (``results.md`` /
  ``results.csv``). The sweep folder keeps the file (``sweep.yaml``) and the settings
  (``sweep_state.json``), so ``--resume FOLDER`` reruns only its unfinished trials.
* ``--backend wandb``: ``wandb.sweep`` registers the same file and ``wandb agent``
  processes run its ``command`` (``longrec train ... key=value``); agents started on
  other machines with the sweep id share the work.
* ``--backend ray``: the same trials as Ray Tune trials, on a local Ray or a cluster
  (``experiments.sweep_ray``); the sweep folder, its records and resume are the local backend's.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from envs.atomic_file import atomic_write_text
from experiments.config import ConfigError, describe_keys, flatten, load_config

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                 "log_uniform_values", "q_log_uniform_values", "normal", "q_normal", "log_normal")
JOB_NAMES = ("train", "eval", "pretrain")
SWEEP_DIR = Path(__file__).resolve().parent / "sweeps"
STATE_FILE = "sweep_state.json"
TRIALS_FILE = "trials.jsonl"
INTERRUPTED = "the sweep stopped before this trial ended"


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
    """Parse and validate a sweep file.

    With ``validate_values`` every listed value is checked against the config types and comes back
    as the key's type: ``1e-2``, which YAML 1.1 reads as the string "1e-2", is the float 0.01 for a
    float key. Distribution bounds (``min``, ``max``, ``mu``, ``sigma``, ``q``) are always numbers.
    """
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
    run_cap = raw.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        raise SweepError(f"sweep key 'run_cap' must be an integer >= 1; got {run_cap!r}")
    spec = SweepSpec(path=path, method=method, metric=metric.get("name", "eval/return"), goal=goal,
                     parameters=parameters, job=job, base_config=base, run_cap=run_cap, raw=raw)
    return _validate_values(spec) if validate_values else spec


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
    for bound in ("min", "max", "mu", "sigma", "q"):
        if bound in spec:
            spec[bound] = _bound_number(name, bound, spec[bound])
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


def _bound_number(name: str, bound: str, value: Any) -> int | float:
    """A distribution bound as a number (``min: 1e-2`` arrives from YAML 1.1 as the string "1e-2")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise SweepError(f"sweep parameter {name!r}: {bound}={value!r} must be a number (e.g. {bound}: 1.0e-2)")


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


def _validate_values(spec: SweepSpec) -> SweepSpec:
    """Every key exists and every listed value type-checks, before any trial starts.

    Returns the spec whose ``value`` / ``values`` have the config key's type (see ``typed_value``).
    """
    leaf_keys = {row[0] for row in describe_keys()}
    parameters = {}
    for key, param in spec.parameters.items():
        param = dict(param)
        dist = param["distribution"]
        if dist == "constant":
            param["value"] = typed_value(spec.base_config, key, param["value"], leaf_keys)
        elif dist == "categorical":
            param["values"] = [typed_value(spec.base_config, key, v, leaf_keys) for v in param["values"]]
        elif dist == "int_uniform":
            for value in (int(param["min"]), int(param["max"])):
                typed_value(spec.base_config, key, value, leaf_keys)
        else:
            typed_value(spec.base_config, key, float(param["min"] if "min" in param else param.get("mu", 0.0)),
                        leaf_keys)
        parameters[key] = param
    return dataclasses.replace(spec, parameters=parameters)


def typed_value(base_config: str, key: str, value: Any, leaf_keys: set[str]) -> Any:
    """``value`` checked against config key ``key``, converted to its type when YAML left a number as text.

    ``"1e-2"`` (YAML 1.1 reads ``1e-2`` without a dot as a string) becomes 0.01 for a float key (the
    config's own coercion decides). Under a key without a declared type (inside ``env.kwargs``) such
    a string is an error: nothing would convert it before the trial.
    """
    try:
        cfg = load_config(base_config, overrides_of({key: value}))
    except ConfigError as exc:
        raise SweepError(f"sweep parameter {key!r}={value!r}: {exc}") from None
    if not isinstance(value, str):
        return value
    typed = cfg.flat().get(key, value)
    if isinstance(typed, (int, float)) and not isinstance(typed, bool):
        return typed
    if key not in leaf_keys and _is_number_text(value):
        raise SweepError(f"sweep parameter {key!r}: value {value!r} is text (YAML reads a number without a dot, "
                         f"like 1e-2, as a string) and {key!r} has no declared type; write it with a dot: "
                         "1.0e-2, or 0.01")
    return value


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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


@dataclass(frozen=True)
class SweepState:
    """The settings of a local sweep, stored in its folder (``sweep_state.json``) when it starts.

    With the folder's ``sweep.yaml`` they fix the trial list, so ``--resume`` runs the same trials.
    """

    count: int | None
    """number of trials (``None``: the whole grid)"""
    seed: int
    """seed of the random / bayes sampler"""
    overrides: tuple[str, ...]
    """KEY=VALUE config overrides applied to every trial"""
    job: str
    """what each trial runs: ``train`` / ``eval`` / ``pretrain`` or ``module:function``"""
    spec_sha256: str
    """hash of the folder's ``sweep.yaml``: a resumed sweep runs the file it started with"""
    source: str = "sweep.yaml"
    """name of the file the sweep started from (``kl_lr.yaml``): results title, default W&B group"""

    def write(self, folder: Path) -> None:
        atomic_write_text(folder / STATE_FILE, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> SweepState:
        """The stored settings; SweepError naming the folder when it holds no local sweep."""
        path = folder / STATE_FILE
        if not path.is_file() or not (folder / "sweep.yaml").is_file():
            raise SweepError(f"--resume {str(folder)!r} is not a local sweep folder (it needs the {STATE_FILE} and "
                             "sweep.yaml that `longrec sweep --backend local` or `--backend ray` writes when it starts)")
        try:
            data = json.loads(path.read_text())
            return cls(count=data["count"], seed=int(data["seed"]), overrides=tuple(data["overrides"]),
                       job=str(data["job"]), spec_sha256=str(data["spec_sha256"]), source=str(data["source"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SweepError(f"--resume {str(folder)!r}: {STATE_FILE} is unreadable ({exc!r})") from None


def init_worker(threads: int) -> None:
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


# ------------------------------------------------ one process per trial


def _trial_main(trial: TrialSpec, threads: int, writer: Any) -> None:
    """Entry point of a trial's process: its share of the cores, the trial, the result sent to the parent."""
    init_worker(threads)
    try:
        writer.send(run_trial(trial))
    finally:
        writer.close()


class _TrialProcess:
    """One trial in its own spawn process; its TrialResult comes back through a pipe."""

    def __init__(self, context: Any, trial: TrialSpec, threads: int) -> None:
        self.trial = trial
        self.start = time.time()
        self.reader, writer = context.Pipe(duplex=False)
        self.process = context.Process(target=_trial_main, args=(trial, threads, writer),
                                       name=f"sweep-trial-{trial.index:03d}")
        self.process.start()
        writer.close()  # the child holds the only writer: its death reads as end-of-file here

    @property
    def waitables(self) -> tuple[Any, int]:
        return self.reader, self.process.sentinel

    def result(self) -> TrialResult:
        """The trial's result; a failed one naming the exit code when the process died without sending it."""
        result = None
        try:
            if self.reader.poll():
                result = self.reader.recv()
        except (EOFError, OSError, ValueError):  # died before or while sending
            result = None
        self._join()
        if isinstance(result, TrialResult):
            return result
        error = died_message(self.process.exitcode)
        run_dir = close_stale_runs(Path(self.trial.sweep_dir), self.trial.index, "failed", error)
        return TrialResult(self.trial.index, self.trial.params, "failed", run_dir, None, error,
                           time.time() - self.start)

    def stop(self) -> None:
        """End the process (the sweep itself is stopping) and mark its run folder interrupted."""
        if self.process.is_alive():
            self.process.terminate()
        self._join()
        close_stale_runs(Path(self.trial.sweep_dir), self.trial.index, "interrupted", INTERRUPTED)

    def _join(self, timeout: float = 30.0) -> None:
        self.process.join(timeout)
        if self.process.is_alive():  # sent its result but hangs on exit
            self.process.kill()
            self.process.join()
        self.reader.close()


def died_message(exitcode: int | None) -> str:
    """``worker process died (exit code -9: killed by SIGKILL, e.g. out of memory)``."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = ", e.g. out of memory" if name == "SIGKILL" else ""
        return f"worker process died (exit code {exitcode}: killed by {name}{why})"
    return f"worker process died (exit code {exitcode}) without reporting a result"


def close_stale_runs(sweep_dir: Path, index: int | None, status: str, error: str) -> str | None:
    """Mark the run folders of trial ``index`` (None: of every trial) still ``running`` as ``status``.

    A trial process that is killed cannot close its own run folder: the sweep does it (and a resumed
    sweep for the trials of a sweep that was killed). Returns the newest folder marked.
    """
    from experiments.run import read_json

    newest = None
    pattern = f"trial-{index:03d}__*/summary.json" if index is not None else "trial-*__*/summary.json"
    folders = sorted(sweep_dir.glob(pattern), key=lambda p: p.stat().st_mtime)
    for path in folders:
        try:
            summary = read_json(path)
        except ValueError:
            continue
        if summary.get("status") != "running":
            continue
        summary.update(status=status, error=error, ended_at=datetime.now(UTC).isoformat(timespec="seconds"))
        atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
        (path.parent / "error.txt").write_text(error + "\n")
        newest = str(path.parent)
    return newest


def run_trials(next_trial: Callable[[], TrialSpec | None], on_done: Callable[[TrialResult], None],
               workers: int, threads: int) -> None:
    """Run trials until ``next_trial`` returns None, each in a fresh spawn process, ``workers`` at once.

    One process per trial rather than a pool: a trial whose process dies (killed, out of memory) is
    one failed result naming its exit code, and the others run on. On any exception (Ctrl-C) the
    running trials are stopped.
    """
    context = multiprocessing.get_context("spawn")
    running: list[_TrialProcess] = []
    more = True
    try:
        while True:
            while more and len(running) < workers:
                trial = next_trial()
                if trial is None:
                    more = False
                else:
                    running.append(_TrialProcess(context, trial, threads))
            if not running:
                return
            ready = set(multiprocessing.connection.wait([w for h in running for w in h.waitables]))
            for handle in [h for h in running if ready.intersection(h.waitables)]:
                running.remove(handle)
                on_done(handle.result())
    finally:
        for handle in running:
            handle.stop()


# ------------------------------------------------ the sweep


def check_count(count: int | None) -> None:
    """A trial count, when given, is at least 1 (0 used to mean "every trial")."""
    if count is not None and count < 1:
        raise SweepError(f"--count must be >= 1; got {count}")


Executor = Callable[[dict[int, TrialResult], Callable[[int, dict[str, Any]], TrialSpec],
                     Callable[[TrialResult], None]], None]
"""Where a sweep's trials run: ``execute(previous, make_trial, record)`` runs every trial not finished in
``previous`` (``make_trial(index, params)`` builds each) and calls ``record`` as each one ends."""


def new_sweep(sweep: str | Path | SweepSpec, count: int | None = None, out_dir: str | Path | None = None,
              overrides: Sequence[str] = (), seed: int = 0, runs_dir: str | Path = "runs",
              job: str | None = None) -> tuple[SweepSpec, SweepState, Path]:
    """A new sweep's file, settings and folder, every value checked; nothing is created yet."""
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    check_count(count)
    cap = count or spec.run_cap
    if spec.method != "grid" and not cap:
        raise SweepError(f"method {spec.method} needs a trial count: --count N (or run_cap in the sweep file)")
    if spec.method == "bayes":
        import_optuna()
    load_config(spec.base_config, list(overrides))  # bad extra overrides fail before any trial
    state = SweepState(cap, seed, tuple(overrides), job or spec.job, _sha256(spec.path), spec.path.name)
    resolve_job(state.job)
    planned_trials(spec, state)  # e.g. a grid over a continuous parameter fails before the folder exists
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = Path(out_dir) if out_dir else Path(runs_dir) / "sweeps" / f"{spec.path.stem}__{stamp}"
    if (folder / TRIALS_FILE).exists():
        raise SweepError(f"{folder} already holds a sweep ({TRIALS_FILE}); continue it with "
                         f"`longrec sweep --resume {folder}`, or choose another --out")
    return spec, state, folder


def create_sweep_folder(spec: SweepSpec, state: SweepState, folder: Path) -> None:
    """The sweep folder with its ``sweep.yaml`` (copy of the file) and ``sweep_state.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    if spec.path.resolve() != (folder / "sweep.yaml").resolve():
        shutil.copyfile(spec.path, folder / "sweep.yaml")
    state.write(folder)


def run_local_sweep(sweep: str | Path | SweepSpec, workers: int = 1, count: int | None = None,
                    out_dir: str | Path | None = None, overrides: Sequence[str] = (), seed: int = 0,
                    runs_dir: str | Path = "runs", progress: bool = True, job: str | None = None,
                    on_result: Callable[[TrialResult], None] | None = None) -> tuple[Path, list[TrialResult]]:
    """Run a sweep, each trial in its own process, ``workers`` at once; returns the sweep folder and the results.

    ``job`` replaces the file's command (``train``/``eval``/``pretrain``, or ``module:function`` taking
    ``(cfg, run)``: e.g. a synthetic objective in tests). The folder holds ``sweep.yaml`` (copy),
    ``sweep_state.json`` (count, seed, overrides, job: what ``resume_local_sweep`` needs), one run
    folder per trial, ``trials.jsonl`` (appended as trials end) and the ranked ``results.md`` /
    ``results.csv``. A trial that fails, or whose process dies, is a failed result; the others run on.
    """
    _check_workers(workers)
    spec, state, folder = new_sweep(sweep, count, out_dir, overrides, seed, runs_dir, job)
    create_sweep_folder(spec, state, folder)
    return run_sweep(spec, state, folder, {}, local_executor(spec, state, workers), progress, on_result)


def open_sweep(folder: str | Path, count: int | None = None, seed: int | None = None,
               overrides: Sequence[str] = ()) -> tuple[SweepSpec, SweepState, dict[int, TrialResult]]:
    """A sweep folder to resume: its file, stored settings and trial records; given options may only repeat them."""
    folder = Path(folder)
    state = SweepState.read(folder)
    if _sha256(folder / "sweep.yaml") != state.spec_sha256:
        raise SweepError(f"--resume {str(folder)!r}: its sweep.yaml changed since the sweep started; a resume "
                         "runs the same trials (start a new sweep with the edited file instead)")
    check_count(count)
    for option, given, stored in (("--count", count, state.count), ("--seed", seed, state.seed)):
        if given is not None and given != stored:
            raise SweepError(f"--resume {str(folder)!r}: {option} {given} differs from the sweep's stored "
                             f"{option} {stored if stored is not None else 'none (the whole grid)'}; drop {option}")
    if overrides and tuple(overrides) != state.overrides:
        raise SweepError(f"--resume {str(folder)!r}: overrides {' '.join(overrides)} differ from the sweep's stored "
                         f"overrides ({' '.join(state.overrides) or 'none'}); drop them")
    spec = load_sweep(folder / "sweep.yaml")
    if spec.method == "bayes":
        import_optuna()
    return spec, state, read_trials(folder)


def resume_local_sweep(folder: str | Path, workers: int = 1, count: int | None = None, seed: int | None = None,
                       overrides: Sequence[str] = (), progress: bool = True,
                       on_result: Callable[[TrialResult], None] | None = None) -> tuple[Path, list[TrialResult]]:
    """Rerun the unfinished trials (failed, interrupted, never started) of a local sweep folder, in it.

    The trials come from the folder's ``sweep.yaml`` and ``sweep_state.json``; ``count``, ``seed`` and
    ``overrides`` may only repeat the stored values. Finished trials are kept as they are; the
    reruns are appended to ``trials.jsonl`` and ``results.md`` / ``results.csv`` rank all trials.
    Grid and random rerun the same parameters. Bayes replays the finished trials into a fresh Optuna
    study, retries each failed trial with its parameters, and asks TPE for the trials never started.
    Earlier attempts' run folders stay (marked failed or interrupted).
    """
    spec, state, previous = open_sweep(folder, count, seed, overrides)
    _check_workers(workers)
    close_stale_runs(Path(folder), None, "interrupted", INTERRUPTED)
    return run_sweep(spec, state, Path(folder), previous, local_executor(spec, state, workers), progress, on_result)


def planned_trials(spec: SweepSpec, state: SweepState) -> list[dict[str, Any]] | None:
    """Grid and random: every trial's parameters in order (fixed by the spec, count and seed); bayes: None."""
    if spec.method == "grid":
        trials = grid_trials(spec)
        return trials[:state.count] if state.count else trials
    if spec.method == "random":
        return random_trials(spec, int(state.count or 0), state.seed)
    return None


def read_trials(folder: str | Path) -> dict[int, TrialResult]:
    """The latest record of each trial in ``trials.jsonl`` (a line torn by a killed sweep is skipped)."""
    path = Path(folder) / TRIALS_FILE
    latest: dict[int, TrialResult] = {}
    if not path.exists():
        return latest
    for line in path.read_text().splitlines():
        try:
            result = TrialResult(**json.loads(line))
        except (ValueError, TypeError):
            continue
        latest[result.index] = result
    return latest


def run_sweep(spec: SweepSpec, state: SweepState, folder: Path, previous: dict[int, TrialResult], execute: Executor,
              progress: bool = True, on_result: Callable[[TrialResult], None] | None = None,
              ) -> tuple[Path, list[TrialResult]]:
    """Run every trial of the sweep not finished in ``previous`` through ``execute``; record, rank and return all.

    The bookkeeping is the same whatever runs the trials: each result is appended to ``trials.jsonl``
    as it arrives, and ``results.md`` / ``results.csv`` rank all trials (also when interrupted).
    """
    finished = {i: r for i, r in previous.items() if r.status == "finished"}
    extra = (f"logging.group={json.dumps(spec.raw.get('name') or Path(state.source).stem)}", *state.overrides)

    def make_trial(index: int, params: dict[str, Any]) -> TrialSpec:
        return TrialSpec(index, params, spec.base_config, extra, state.job, str(folder), spec.metric)

    planned = planned_trials(spec, state)
    total = len(planned) if planned is not None else int(state.count or 0)
    results = list(finished.values())
    log_path = folder / TRIALS_FILE
    _end_last_line(log_path)
    bar = _bar(total, progress, initial=len(finished))

    def record(result: TrialResult) -> None:
        results.append(result)
        with open(log_path, "a") as fh:
            fh.write(json.dumps(result.__dict__) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{sum(r.status == 'failed' for r in results)} failed")
        if on_result is not None:
            on_result(result)

    try:
        execute(previous, make_trial, record)
    except KeyboardInterrupt:
        write_results(spec, sorted(results, key=lambda r: r.index), folder, state.source)
        print(f"sweep interrupted: `longrec sweep --resume {folder}` runs its unfinished trials", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    results.sort(key=lambda r: r.index)
    write_results(spec, results, folder, state.source)
    return folder, results


def local_executor(spec: SweepSpec, state: SweepState, workers: int) -> Executor:
    """Trials in fresh spawn processes on this machine, ``workers`` at once, each with its share of the cores."""

    def execute(previous: dict[int, TrialResult], make_trial: Callable[[int, dict[str, Any]], TrialSpec],
                record: Callable[[TrialResult], None]) -> None:
        planned = planned_trials(spec, state)
        if planned is not None:
            finished = {i for i, r in previous.items() if r.status == "finished"}
            source: _PlannedTrials | _BayesTrials = _PlannedTrials(
                [make_trial(i, p) for i, p in enumerate(planned) if i not in finished])
        else:
            source = _BayesTrials(spec, state, previous, make_trial)

        def done(result: TrialResult) -> None:
            source.tell(result)
            record(result)

        run_trials(source.next_trial, done, workers, max(1, (os.cpu_count() or 1) // workers))

    return execute


class _PlannedTrials:
    """Grid and random: the planned trials still to run, in order (nothing learns from the results)."""

    def __init__(self, trials: Sequence[TrialSpec]) -> None:
        self.queue = iter(trials)

    def next_trial(self) -> TrialSpec | None:
        return next(self.queue, None)

    def tell(self, result: TrialResult) -> None:
        pass


class _BayesTrials:
    """Method bayes on Optuna's ask/tell interface (TPE seeded with the sweep's seed).

    On resume, the finished trials are replayed into the study first; a failed trial is retried with
    its own parameters; the trials never started are asked from TPE.
    """

    def __init__(self, spec: SweepSpec, state: SweepState, previous: dict[int, TrialResult],
                 make_trial: Callable[[int, dict[str, Any]], TrialSpec]) -> None:
        optuna = import_optuna()
        self.optuna, self.spec, self.make_trial = optuna, spec, make_trial
        self.study = optuna.create_study(direction=spec.goal, sampler=optuna.samplers.TPESampler(seed=state.seed))
        self.retry = {i: r.params for i, r in previous.items() if r.status != "finished"}
        finished = sorted(i for i, r in previous.items() if r.status == "finished")
        for index in finished:
            trial, _ = self._ask(previous[index].params)
            self._tell(trial, previous[index])
        self.todo = [i for i in range(int(state.count or 0)) if i not in finished]
        self.running: dict[int, Any] = {}

    def next_trial(self) -> TrialSpec | None:
        if not self.todo:
            return None
        index = self.todo.pop(0)
        trial, params = self._ask(self.retry.get(index))
        self.running[index] = trial
        return self.make_trial(index, params)

    def tell(self, result: TrialResult) -> None:
        self._tell(self.running.pop(result.index), result)

    def _ask(self, fixed: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """A new Optuna trial and its parameters; ``fixed``: the parameters it must take (replay, retry)."""
        if fixed is not None:
            self.study.enqueue_trial(_optuna_params(self.spec, fixed))
        trial = self.study.ask()
        return trial, {k: optuna_suggest(trial, k, p) for k, p in self.spec.parameters.items()}

    def _tell(self, trial: Any, result: TrialResult) -> None:
        if result.status == "finished" and result.value is not None:
            self.study.tell(trial, result.value)
        else:
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)


def _optuna_params(spec: SweepSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """Trial parameters named as ``optuna_suggest`` names them (no constants; log_uniform as its exponent)."""
    named = {}
    for key, param in spec.parameters.items():
        if param["distribution"] == "constant" or key not in params:
            continue
        if param["distribution"] == "log_uniform":
            named[key + ".log"] = math.log(params[key])
        else:
            named[key] = params[key]
    return named


def import_optuna() -> Any:
    """Optuna, quiet; SweepError naming the install command when it is missing."""
    try:
        import optuna
    except ImportError:
        raise SweepError("method bayes with --backend local or ray needs Optuna (pip install optuna); "
                         "or run it with --backend wandb, or use method random") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise SweepError(f"--workers must be >= 1; got {workers}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _end_last_line(path: Path) -> None:
    """Finish a last line torn by a killed sweep, so that appended records start on their own line."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


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


def write_results(spec: SweepSpec, results: Sequence[TrialResult], folder: Path, source: str | None = None) -> str:
    """Ranked ``results.md`` and ``results.csv``; returns the Markdown (titled with ``source``, the file name)."""
    ranked = rank(results, spec.goal)
    keys = list(spec.parameters)
    varying = [k for k in keys if spec.parameters[k]["distribution"] != "constant"] or keys
    header = ["rank", "trial", "status", spec.metric, *varying, "run"]
    lines = [f"## sweep {source or spec.path.name}: {spec.method}, {spec.goal} {spec.metric}, "
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


def _bar(total: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="sweep trials", unit="trial")


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
