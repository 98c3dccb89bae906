"""``longrec sweep --backend ray``: the trials of a W&B sweep file as Ray Tune trials.

Ray Tune (Liaw et al. 2018, "Tune: A Research Platform for Distributed Model Selection and
Training") schedules the trials on a local Ray (``--workers`` CPUs) or on a cluster
(``--address auto`` on a node of it, ``ray://HOST:PORT`` through Ray Client), each with
``--cpus-per-trial`` / ``--gpus-per-trial``. What a trial is does not change: the Tune trainable
calls ``sweep.run_trial``, so each trial is an ordinary run folder under the sweep folder (with
its W&B run, offline unless logged in) and a ``TrialResult``; the sweep folder, ``trials.jsonl``,
the ranked ``results.md`` / ``results.csv`` and ``--resume`` are the local backend's
(``sweep.run_sweep``), so a sweep started on one backend can be resumed on the other.

Which trial runs next is a Tune ``Searcher`` (``SweepSearcher``): grid and random hand out the
local backend's planned trials (the same parameters for the same file, ``--count`` and
``--seed``); bayes asks Optuna's TPE through Tune's ``OptunaSearch``, over the parameters
translated to Tune's search space (``tune_space``). A failing trial is a failed result (the
trainable never raises); a trial whose process dies is recorded as failed from Tune's error.
Ray is an optional dependency (the extra ``ray``); this module imports without it and says how
to install it when it is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.sweep import (
    INTERRUPTED,
    Executor,
    SweepError,
    SweepSpec,
    SweepState,
    TrialResult,
    TrialSpec,
    close_stale_runs,
    create_sweep_folder,
    import_optuna,
    init_worker,
    new_sweep,
    open_sweep,
    planned_trials,
    run_sweep,
    run_trial,
)

try:
    import ray
    from ray import tune
    from ray.tune import Callback
    from ray.tune.search import Searcher
    from ray.tune.search.sample import Domain
except ImportError:  # the extra `ray` is not installed: require_ray() says so when the backend is used
    ray = tune = Domain = None
    Callback = Searcher = object

TRIAL_INDEX = "trial_index"
"""key of a Tune trial's config holding the sweep's trial index (the other keys are its parameters)"""
RESULT_KEY = "trial_result"
"""key of the reported result holding the trial's ``TrialResult`` as JSON"""
MODES = {"maximize": "max", "minimize": "min"}
TUNE_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # trials keep the working directory (Tune passes it on to trial actors)
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C stops the sweep as it stops a local one (then --resume)
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no Tune tables on the console
}


@dataclass(frozen=True)
class RayOptions:
    """Where the trials of a Ray sweep run, and what each one holds."""

    address: str | None = None
    """an existing cluster: ``auto`` (on one of its nodes), ``HOST:PORT`` or ``ray://HOST:PORT``; None: a local Ray"""
    workers: int = 1
    """CPUs of the local Ray started without ``address`` (trials at once: ``workers // cpus_per_trial``)"""
    cpus_per_trial: float = 1.0
    """CPUs reserved per trial (also its torch threads)"""
    gpus_per_trial: float = 0.0
    """GPUs reserved per trial (a fraction shares one GPU between trials)"""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SweepError(f"--workers must be >= 1; got {self.workers}")
        if not self.cpus_per_trial > 0:
            raise SweepError(f"--cpus-per-trial must be > 0; got {self.cpus_per_trial:g}")
        if self.gpus_per_trial < 0:
            raise SweepError(f"--gpus-per-trial must be >= 0; got {self.gpus_per_trial:g}")
        if self.address is None:
            if self.cpus_per_trial > self.workers:
                raise SweepError(f"--cpus-per-trial {self.cpus_per_trial:g} does not fit the local Ray of --workers "
                                 f"{self.workers} CPUs; raise --workers or lower --cpus-per-trial")
            return
        if not re.fullmatch(r"auto|(ray://)?[^\s:/]+:\d+", self.address):
            raise SweepError(f"--address {self.address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
        if self.workers != 1:
            raise SweepError(f"--workers {self.workers} sizes a local Ray; with --address {self.address} the "
                             "cluster's CPUs decide how many trials run at once: drop --workers")

    @property
    def client(self) -> bool:
        """Ray Client (``ray://``): Tune itself runs on the cluster, and the results come back at the end."""
        return bool(self.address and self.address.startswith("ray://"))


def require_ray() -> Any:
    """The ``ray`` module; SweepError naming the extra to install when it is missing."""
    if ray is None:
        raise SweepError("--backend ray needs Ray Tune: pip install -e .[ray]  (or pip install 'ray[tune]')")
    return ray


# --------------------------------------------------------------------------- the sweep file in Tune's terms


def tune_space(spec: SweepSpec) -> dict[str, Any]:
    """Every parameter as a Tune search-space entry: a domain (``tune.loguniform`` ...) or a constant.

    Keys stay the dotted config keys (``ppo.learning_rate``). This is the space Optuna samples for
    method bayes; ``int_uniform`` includes ``max`` (Tune's ``randint`` excludes its upper bound) and
    ``log_uniform`` (natural-log exponents) becomes the log-uniform over ``exp(min)..exp(max)``.
    """
    require_ray()
    space: dict[str, Any] = {}
    for key, param in spec.parameters.items():
        dist = param["distribution"]
        lo, hi = param.get("min"), param.get("max")
        if dist == "constant":
            space[key] = param["value"]
        elif dist == "categorical":
            space[key] = tune.choice(list(param["values"]))
        elif dist == "int_uniform":
            space[key] = tune.randint(int(lo), int(hi) + 1)
        elif dist == "uniform":
            space[key] = tune.uniform(float(lo), float(hi))
        elif dist == "q_uniform":
            space[key] = tune.quniform(float(lo), float(hi), float(param.get("q", 1.0)))
        elif dist == "log_uniform_values":
            space[key] = tune.loguniform(float(lo), float(hi))
        elif dist == "q_log_uniform_values":
            space[key] = tune.qloguniform(float(lo), float(hi), float(param.get("q", 1.0)))
        elif dist == "log_uniform":
            space[key] = tune.loguniform(math.exp(lo), math.exp(hi))
        else:
            raise SweepError(f"method bayes on Ray (Optuna) does not support distribution {dist!r} for {key!r}; "
                             "use uniform / q_uniform / log_uniform_values / int_uniform / values")
    return space


class SweepSearcher(Searcher):
    """Tune's searcher for a sweep: which trial runs next, with which parameters.

    Grid and random: the planned trials not finished yet, in order. Bayes: Optuna's TPE through
    Tune's ``OptunaSearch``; the finished trials of an earlier attempt are replayed into its study
    first, and failed ones are retried with their own parameters before new ones are asked for.
    Each suggested config is ``{TRIAL_INDEX: index, **params}``, the parameters in the file's order.
    """

    def __init__(self, todo: list[int], planned: Mapping[int, dict[str, Any]] | None = None, optuna: Any = None,
                 replay: Sequence[tuple[dict[str, Any], float | None]] = ()) -> None:
        super().__init__()
        self.todo = list(todo)
        self.planned = dict(planned or {})
        self.optuna = optuna
        self.replay = list(replay)
        self.space: dict[str, Any] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        if self.optuna is not None:
            self.space = dict(config)
            self.optuna.set_search_properties(metric, mode, config, **spec)
            for point, value in self.replay:
                failed = value is None or not math.isfinite(value)
                self.optuna.add_evaluated_point(point, None if failed else value, error=failed)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.todo:
            return Searcher.FINISHED
        index = self.todo.pop(0)
        if self.optuna is None:
            return {TRIAL_INDEX: index, **self.planned[index]}
        sampled = self.optuna.suggest(trial_id)
        return {TRIAL_INDEX: index, **{key: sampled.get(key, entry) for key, entry in self.space.items()}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.optuna is None:
            return
        value = (result or {}).get(self.metric)
        failed = error or not isinstance(value, (int, float)) or not math.isfinite(value)
        self.optuna.on_trial_complete(trial_id, None if failed else result, error=failed)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the sweep folder's ``trials.jsonl`` is the state ``longrec sweep --resume`` reads."""


@dataclass(frozen=True)
class TuneSearch:
    """A sweep's unfinished trials as a Tune run."""

    param_space: dict[str, Any]
    """``Tuner(param_space=...)``: the search space Optuna samples (bayes); empty for grid and random"""
    searcher: SweepSearcher
    """``TuneConfig(search_alg=...)``"""
    num_samples: int
    """trials to run"""


def tune_search(spec: SweepSpec, state: SweepState, previous: Mapping[int, TrialResult] | None = None) -> TuneSearch:
    """The sweep's trials not finished in ``previous`` as a Tune param_space, searcher and trial count.

    Grid and random run ``planned_trials`` (the local backend's list); bayes samples ``tune_space``
    with ``OptunaSearch`` seeded with the sweep's seed.
    """
    previous = previous or {}
    finished = {i: r for i, r in previous.items() if r.status == "finished"}
    planned = planned_trials(spec, state)
    if planned is not None:
        todo = [i for i in range(len(planned)) if i not in finished]
        return TuneSearch({}, SweepSearcher(todo, planned={i: planned[i] for i in todo}), len(todo))
    import_optuna()
    from ray.tune.search.optuna import OptunaSearch

    space = tune_space(spec)
    sampled = [key for key, entry in space.items() if isinstance(entry, Domain)]
    if not sampled:
        raise SweepError(f"method bayes needs a parameter to search (values or min/max); every parameter of "
                         f"{spec.path.name} is one value (use method grid)")
    count = int(state.count or 0)
    retry = sorted(i for i in previous if i not in finished and i < count)
    todo = retry + [i for i in range(count) if i not in finished and i not in retry]
    optuna = OptunaSearch(seed=state.seed,
                          points_to_evaluate=[{k: previous[i].params[k] for k in sampled} for i in retry] or None)
    replay = [({k: r.params[k] for k in sampled}, r.value) for _, r in sorted(finished.items())]
    return TuneSearch(space, SweepSearcher(todo, optuna=optuna, replay=replay), len(todo))


# --------------------------------------------------------------------------- the trials


def _tune_trial(config: dict[str, Any], make_trial: Callable[[int, dict[str, Any]], TrialSpec], metric: str,
                threads: int, cwd: str) -> None:
    """Tune's function trainable: trial ``config[TRIAL_INDEX]`` as an ordinary run (``sweep.run_trial``).

    Reports the sweep metric (NaN when the trial failed or logged none) and the whole TrialResult.
    """
    if os.path.isdir(cwd):  # relative paths in the config (data.path, eval.checkpoint) mean what they mean here
        os.chdir(cwd)
    init_worker(threads)
    params = {key: value for key, value in config.items() if key != TRIAL_INDEX}
    result = run_trial(make_trial(int(config[TRIAL_INDEX]), params))
    tune.report({metric: math.nan if result.value is None else result.value,
                 RESULT_KEY: json.dumps(dataclasses.asdict(result))})


def _trial_name(trial: Any) -> str:
    return f"trial-{trial.config[TRIAL_INDEX]:03d}"


class _Recorder(Callback):
    """Each trial's TrialResult to the sweep's record, once: as the trial reports it (in the driver), or from
    Tune's error when its process died first, or from the results Tune returns (Ray Client)."""

    def __init__(self, record: Callable[[TrialResult], None], folder: Path) -> None:
        self.record, self.folder = record, folder
        self.recorded: set[int] = set()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.add(result, trial.config)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.add(trial.last_result, trial.config, _trial_exception(trial))

    def add(self, metrics: Mapping[str, Any] | None, config: Mapping[str, Any] | None, error: Any = None) -> None:
        if not config or TRIAL_INDEX not in config:
            return  # Ray Client: a trial that died before reporting; --resume runs it again
        index = int(config[TRIAL_INDEX])
        if index in self.recorded:
            return
        if metrics and RESULT_KEY in metrics:
            result = TrialResult(**json.loads(metrics[RESULT_KEY]))
        else:
            message = trial_error(error)
            run_dir = close_stale_runs(self.folder, index, "failed", message)
            params = {k: v for k, v in config.items() if k != TRIAL_INDEX}
            result = TrialResult(index, params, "failed", run_dir, None, message)
        self.recorded.add(index)
        self.record(result)


def _trial_exception(trial: Any) -> Any:
    """The exception that ended a trial, from the driver's copy (Tune uploads it to storage later)."""
    path = trial.pickled_error_file
    if path and os.path.exists(path):
        with open(path, "rb") as fh:
            return ray.cloudpickle.load(fh)
    return trial.get_pickled_error()


def trial_error(error: Any) -> str:
    """A trial that ended without reporting: ``Ray trial ended without a result (RayActorError: The actor died ...)``."""
    lines = str(error or "").strip().splitlines()
    kind = type(error).__name__ if error is not None else "no error recorded"
    return f"Ray trial ended without a result ({kind}{': ' + lines[0] if lines else ''})"


def ray_executor(spec: SweepSpec, state: SweepState, folder: Path, options: RayOptions) -> Executor:
    """Run the trials as one Tune run on the Ray this process is connected to (``ray_session``).

    Tune's own files (experiment state, per-trial results) go to ``<sweep folder>/ray/tune-<n>/``.
    """

    def execute(previous: dict[int, TrialResult], make_trial: Callable[[int, dict[str, Any]], TrialSpec],
                record: Callable[[TrialResult], None]) -> None:
        search = tune_search(spec, state, previous)
        if not search.num_samples:
            return
        recorder = _Recorder(record, folder)
        trainable = tune.with_parameters(_tune_trial, make_trial=make_trial, metric=spec.metric,
                                         threads=max(1, int(options.cpus_per_trial)), cwd=os.getcwd())
        storage = folder / "ray"
        attempt = len(list(storage.glob("tune-*"))) if storage.is_dir() else 0
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}),
            param_space=search.param_space,
            tune_config=tune.TuneConfig(search_alg=search.searcher, num_samples=search.num_samples,
                                        metric=spec.metric, mode=MODES[spec.goal], reuse_actors=False,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=f"tune-{attempt}", storage_path=str(storage), verbose=0,
                                      callbacks=[] if options.client else [recorder],
                                      failure_config=tune.FailureConfig(max_failures=0)))
        with _environment(TUNE_ENV):
            grid = tuner.fit()
        for result in grid:  # what the callback did not record (Ray Client: everything)
            recorder.add(result.metrics, result.config, result.error)

    return execute


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Connected to the cluster at ``options.address``, or to a new local Ray of ``options.workers`` CPUs.

    Quiet (errors only, no dashboard, trial output stays in Ray's logs and the run folders); a Ray
    this process had already started (a notebook, a test) is used as it is and left running.
    """
    require_ray()
    if ray.is_initialized():
        yield
        return
    if options.address:
        _check_reachable(options.address)  # ray.init retries an address where nothing listens for many minutes
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if options.address:
            ray.init(address=options.address, **quiet)
        else:
            ray.init(num_cpus=options.workers, include_dashboard=False, **quiet)
    except (ConnectionError, ValueError, RuntimeError, ImportError) as exc:
        why = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        if options.client:
            hint = "; Ray Client needs pip install 'ray[client]' and the head's client server (port 10001)"
        elif options.address == "auto":
            hint = "; start the cluster with `ray start --head --port=6379` (and run this on one of its nodes)"
        elif options.address:
            hint = ("; a cluster with token authentication also needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN "
                    "for an explicit HOST:PORT (--address auto on one of its nodes finds both)")
        else:
            hint = ""
        where = f"the Ray cluster at --address {options.address}" if options.address else "a local Ray"
        raise SweepError(f"could not start or reach {where}: {why}{hint}") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if not options.address and options.gpus_per_trial > gpus:
            raise SweepError(f"--gpus-per-trial {options.gpus_per_trial:g}: the local Ray found {gpus:g} GPUs "
                             "on this machine; use --gpus-per-trial 0 or --address of a cluster with GPUs")
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """SweepError when nothing accepts a connection at ``HOST:PORT`` (or ``ray://HOST:PORT``, or what ``auto`` means).

    ``auto`` is ``$RAY_ADDRESS`` or the last cluster started on this machine, found as ``ray.init`` finds it
    (Ray's own helper; when it is not there, ``ray.init`` alone decides).
    """
    target = address.removeprefix("ray://")
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:
            return
        try:
            target = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            target = None
        if target is None:
            raise SweepError("--address auto: no running Ray cluster found from this machine; start one with "
                             "`ray start --head --port=6379`, or give --address HOST:PORT")
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        found = " (what auto found: $RAY_ADDRESS or the last cluster started here; stopped?)" if address == "auto" else ""
        raise SweepError(f"--address {address}: nothing answers at {host}:{port}{found} ({exc.strerror or exc}); "
                         f"start the cluster's head with `ray start --head --port={port}`") from None


# --------------------------------------------------------------------------- the sweep


def run_ray_sweep(sweep: str | Path | SweepSpec, options: RayOptions = RayOptions(), count: int | None = None,
                  out_dir: str | Path | None = None, overrides: Sequence[str] = (), seed: int = 0,
                  runs_dir: str | Path = "runs", progress: bool = True, job: str | None = None,
                  on_result: Callable[[TrialResult], None] | None = None) -> tuple[Path, list[TrialResult]]:
    """Run a sweep as Ray Tune trials; returns the sweep folder (absolute) and the results.

    The arguments and the folder are ``sweep.run_local_sweep``'s; ``options`` say where the trials run.
    Every value is checked, and Ray started or reached, before the folder is made.
    """
    require_ray()
    spec, state, folder = new_sweep(sweep, count, out_dir, overrides, seed, runs_dir, job)
    folder = folder.resolve()  # Ray's trial processes may start elsewhere (another node, another directory)
    tune_search(spec, state)  # e.g. a distribution Optuna cannot sample
    return _run_on_ray(spec, state, folder, {}, options, progress, on_result,
                       start=lambda: create_sweep_folder(spec, state, folder))


def resume_ray_sweep(folder: str | Path, options: RayOptions = RayOptions(), count: int | None = None,
                     seed: int | None = None, overrides: Sequence[str] = (), progress: bool = True,
                     on_result: Callable[[TrialResult], None] | None = None) -> tuple[Path, list[TrialResult]]:
    """``sweep.resume_local_sweep`` with the trials on Ray: the unfinished trials of a sweep folder (any backend's)."""
    require_ray()
    spec, state, previous = open_sweep(folder, count, seed, overrides)
    folder = Path(folder).resolve()
    tune_search(spec, state, previous)
    return _run_on_ray(spec, state, folder, previous, options, progress, on_result,
                       start=lambda: close_stale_runs(folder, None, "interrupted", INTERRUPTED))


def _run_on_ray(spec: SweepSpec, state: SweepState, folder: Path, previous: dict[int, TrialResult],
                options: RayOptions, progress: bool, on_result: Callable[[TrialResult], None] | None,
                start: Callable[[], Any]) -> tuple[Path, list[TrialResult]]:
    """``start()`` (make or tidy the folder) once Ray is up, then the trials; on Ctrl-C, the stopped trials' folders
    are marked interrupted."""
    try:
        with ray_session(options):
            start()
            return run_sweep(spec, state, folder, previous, ray_executor(spec, state, folder, options), progress,
                             on_result)
    except KeyboardInterrupt:
        close_stale_runs(folder, None, "interrupted", INTERRUPTED)  # Ray has stopped the trials by now
        raise
