"""Run folders: everything a run produces, written so that a killed process loses nothing.

Layout (CleanRL's run name ``env__exp__seed__time``)::

    runs/<env>__<name>__<seed>__<YYYYmmdd-HHMMSS>/
        config.yaml      the resolved config (reload with ``load_config(path)``)
        metrics.jsonl    one JSON object per log call ({"step", "time", metric: value}), flushed per line
        summary.json     status, final metrics, per-agent evaluation (atomic rewrite)
        checkpoints/     policy checkpoints
        plots/           PNG figures
        tables/          CSV evaluation tables
        error.txt        traceback, when the run failed
        wandb/           the W&B run (offline unless logged in)

``summary.json`` is the contract read by ``longrec compare`` and the sweep runner:
``env``, ``agent``, ``seed``, ``status`` (running / finished / failed / interrupted),
``metrics`` (flat name -> number: the run's own final numbers, e.g. ``eval/return``)
and optionally ``agents`` ({agent: {metric: number}}: other agents evaluated in the
same run, e.g. the baselines of the quickstart; ``<metric>_ci95`` holds a half-width).
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import time
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from envs.atomic_file import atomic_write_text
from experiments.config import ExperimentConfig, save_config
from experiments.wandb_logging import WandbLogger

STATUSES = ("running", "finished", "failed", "interrupted")
"""what ``summary.json`` records; :func:`live_status` adds ``died`` (``running``, but its process is gone)"""


def run_name(cfg: ExperimentConfig, when: datetime | None = None) -> str:
    """``Video-v0__ce_ppo_kl__0__20260101-120000``."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.env.id.split('/')[-1]}__{cfg.name or cfg.agent}__{cfg.seed}__{stamp}"


def to_jsonable(value: Any) -> Any:
    """numpy / torch scalars and arrays -> plain Python; NaN/inf -> None (valid JSON)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)




def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def live_status(summary: Mapping[str, Any]) -> str:
    """The run's status, with a ``running`` run whose process is gone (killed, machine restarted) shown as
    ``died``; a run of another machine keeps what its summary says."""
    status = str(summary.get("status", "?"))
    pid, host = summary.get("pid"), summary.get("host")
    if status == "running" and isinstance(pid, int) and host == socket.gethostname() and not pid_alive(pid):
        return "died"
    return status


def read_json(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``; a truncated last line (killed mid-write) is skipped."""
    rows = []
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return rows
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class RunPaths:
    """Where a run folder keeps each part (``self.path`` is the folder): shared by :class:`Run` and the
    read-only stand-ins of other processes (``experiments.launch.FollowerRun``)."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def tables_dir(self) -> Path:
        return self.path / "tables"


class Run(RunPaths):
    """One run folder plus its (optional) W&B run. Use as a context manager::

        with Run.create(cfg, job_type="train") as run:
            run.log({"charts/episodic_return": 3.2}, step=1024)
            run.update_summary(metrics={"eval/return": 41.0})

    Leaving the block normally marks the run ``finished``; an exception marks it
    ``failed`` (traceback in ``error.txt``), Ctrl-C marks it ``interrupted``.
    """

    def __init__(self, cfg: ExperimentConfig, path: str | Path, job_type: str = "train",
                 use_wandb: bool | None = None, resume: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.path = Path(path)
        self.job_type = job_type
        self.name = self.path.name
        self.resume = dict(resume) if resume is not None else None
        """``{"from_step": N, ...}`` when this process continues the run (see :meth:`reopen`), else None"""
        for sub in ("checkpoints", "plots", "tables"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._start = time.time()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        if self.resume is None:
            save_config(cfg, self.config_path)
            self._summary: dict[str, Any] = {
                "name": self.name,
                "env": cfg.env.id,
                "agent": cfg.agent,
                "experiment": cfg.name or cfg.agent,
                "seed": cfg.seed,
                "job_type": job_type,
                "status": "running",
                "started_at": now,
                "metrics": {},
            }
        else:
            self._summary = read_json(self.summary_path)
            for key in ("ended_at", "duration_s", "error"):
                self._summary.pop(key, None)
            self._summary["status"] = "running"
            self._summary.setdefault("resumes", []).append({"at": now, **to_jsonable(self.resume)})
        self._summary.update(pid=os.getpid(), host=socket.gethostname())
        self._metrics_fh = open(self.metrics_path, "a", buffering=1)  # line-buffered: one flush per line
        self.metrics_lines = _count_lines(self.metrics_path)
        """rows in ``metrics.jsonl`` so far (checkpoints record it: a resumed run drops the rows after theirs)"""
        enabled = cfg.logging.wandb if use_wandb is None else use_wandb
        run_id = (self._summary.get("wandb") or {}).get("id") if self.resume is not None else None
        self.wandb = WandbLogger(cfg, self.path, self.name, job_type, run_id=run_id) if enabled else None
        if self.wandb is not None:
            self._summary["wandb"] = {"mode": self.wandb.mode, "url": self.wandb.url, "id": self.wandb.run_id}
        self._write_summary()

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(cls, cfg: ExperimentConfig, job_type: str = "train", root: str | Path | None = None,
               name: str | None = None, use_wandb: bool | None = None) -> Run:
        """Make a fresh ``<root>/<name>/`` (root defaults to ``cfg.logging.runs_dir``)."""
        root = Path(root if root is not None else cfg.logging.runs_dir)
        root.mkdir(parents=True, exist_ok=True)
        base = name or run_name(cfg)
        for attempt in range(1000):
            path = root / (base if attempt == 0 else f"{base}-{attempt}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover
            raise RuntimeError(f"could not create a fresh run folder under {root} named {base}")
        return cls(cfg, path, job_type=job_type, use_wandb=use_wandb)

    @classmethod
    def reopen(cls, path: str | Path, cfg: ExperimentConfig, keep_metrics_lines: int | None = None,
               **resume: Any) -> Run:
        """Continue the run in ``path``: same folder, ``metrics.jsonl`` (cut to its first
        ``keep_metrics_lines`` rows: those logged after the checkpoint the run resumes from are
        logged again), summary (status back to ``running``; ``resume`` appended to its ``resumes``)
        and W&B run (resumed by id)."""
        path = Path(path)
        if keep_metrics_lines is not None:
            lines = (path / "metrics.jsonl").read_text().splitlines(keepends=True) if (
                path / "metrics.jsonl").exists() else []
            atomic_write_text(path / "metrics.jsonl", "".join(lines[:keep_metrics_lines]))
        job_type = read_json(path / "summary.json").get("job_type", "train")
        return cls(cfg, path, job_type=job_type, resume=resume)

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._summary))

    # ------------------------------------------------------------------ logging

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append one line to ``metrics.jsonl`` (flushed at once) and forward to W&B."""
        row: dict[str, Any] = {"step": step, "time": round(time.time() - self._start, 3)}
        row.update(to_jsonable(dict(metrics)))
        self._metrics_fh.write(json.dumps(row) + "\n")
        self._metrics_fh.flush()
        self.metrics_lines += 1
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write ``tables/<name>.csv`` (columns = union of row keys, in order) and a ``wandb.Table``."""
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        path = self.tables_dir / f"{name.replace('/', '_')}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow(to_jsonable(dict(row)))
        if self.wandb is not None:
            self.wandb.log_table(name, columns, [[to_jsonable(r.get(c)) for c in columns] for r in rows])
        return path

    def log_plot(self, name: str, path: str | Path) -> None:
        """Register a PNG (already saved, normally under ``plots/``) with W&B as a ``wandb.Image``."""
        if self.wandb is not None:
            self.wandb.log_image(name, path)

    def log_checkpoint(self, path: str | Path, final: bool = True) -> None:
        """Record a checkpoint in the summary and, if final, upload it as a W&B artifact."""
        self._summary.setdefault("checkpoints", []).append(str(Path(path).resolve().relative_to(
            self.path.resolve())) if Path(path).resolve().is_relative_to(self.path.resolve()) else str(path))
        if final:
            self._summary["final_checkpoint"] = self._summary["checkpoints"][-1]
        self._write_summary()
        if final and self.wandb is not None and self.cfg.logging.log_checkpoint:
            self.wandb.log_artifact(path, f"{self.name}-policy", "model", aliases=("latest", "final"))

    def update_summary(self, **values: Any) -> None:
        """Merge values into ``summary.json`` (``metrics`` and ``agents`` dicts are merged key by key)."""
        for key, value in values.items():
            if key in ("metrics", "agents") and isinstance(value, Mapping):
                self._summary.setdefault(key, {}).update(to_jsonable(dict(value)))
            else:
                self._summary[key] = to_jsonable(value)
        self._write_summary()
        if self.wandb is not None and "metrics" in values:
            self.wandb.set_summary(values["metrics"])

    def _write_summary(self) -> None:
        atomic_write_text(self.summary_path, json.dumps(self._summary, indent=2, sort_keys=False) + "\n")

    # ------------------------------------------------------------------ ending

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not one of {STATUSES}")
        if self._metrics_fh.closed:
            return
        self._summary["status"] = status
        self._summary["ended_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._summary["duration_s"] = round(time.time() - self._start, 3)
        if error:
            (self.path / "error.txt").write_text(error)
            self._summary["error"] = error.strip().splitlines()[-1] if error.strip() else error
        if self.wandb is not None:
            self.wandb.finish(exit_code=0 if status == "finished" else 1)
            if self.wandb.error:
                self._summary.setdefault("wandb", {})["error"] = self.wandb.error
        self._write_summary()
        self._metrics_fh.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted", "KeyboardInterrupt\n")
        else:
            self.finish("failed", "".join(traceback.format_exception(exc_type, exc, tb)))

