"""Weights & Biases logging that can never lose a run.

Follows the CleanRL convention (``wandb.init(config=vars(args), group=..., job_type=...)``
with stable metric keys) and W&B's offline-first workflow: runs are recorded locally
(``WANDB_MODE=offline``) unless the user is logged in or asks otherwise, and
``wandb sync <run folder>/wandb/offline-run-*`` uploads them later.

* ``group`` = ``<env>__<agent>``: the W&B UI's "group by" averages seeds of one
  agent into a curve with a band, so agents are compared out of the box;
  ``job_type`` = the command (train / pretrain / eval); tags = env, agent, job.
* The config is logged flat with dotted keys (``ppo.learning_rate``), the same names
  W&B sweep files use, so sweep parameters and run configs line up.
* Every W&B call is guarded: an exception becomes one warning and W&B is switched
  off for the rest of the run; the local run folder stays complete.
"""

from __future__ import annotations

import netrc
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from experiments.config import ExperimentConfig


def is_logged_in() -> bool:
    """True when a W&B API key is available without prompting (env var or ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_mode(config_mode: str = "auto") -> str:
    """W&B mode to use: WANDB_MODE wins, then an explicit ``logging.mode``, else online iff logged in."""
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        return {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
    if config_mode in ("online", "offline"):
        return config_mode
    return "online" if is_logged_in() else "offline"


def run_group(cfg: ExperimentConfig) -> str:
    """W&B group of a run: ``logging.group``, else one group per (env, agent), so seeds aggregate."""
    if cfg.logging.group:
        return cfg.logging.group
    return f"{cfg.env.id.split('/')[-1]}__{cfg.name or cfg.agent}"


def _artifact_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:120] or "checkpoint"


class WandbLogger:
    """Thin guarded wrapper around one ``wandb`` run; all methods are no-ops once disabled."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, run_name: str, job_type: str,
                 run_id: str | None = None) -> None:
        """``run_id``: continue that W&B run (``resume="allow"``), as a resumed run folder does."""
        self.run: Any = None
        self.mode = "disabled"
        self.error: str | None = None
        if cfg.logging.wandb:
            resume = {"id": run_id, "resume": "allow"} if run_id else {}
            self._start(resolve_mode(cfg.logging.mode), project=cfg.logging.project, entity=cfg.logging.entity,
                        name=run_name, group=run_group(cfg), job_type=job_type,
                        tags=list(dict.fromkeys([cfg.env.id.split("/")[-1], cfg.agent, job_type, *cfg.logging.tags])),
                        config=cfg.flat(), dir=str(run_dir), **resume)

    @classmethod
    def open(cls, name: str, group: str, job_type: str, tags: Sequence[str], run_dir: str | Path,
             config: Mapping[str, Any], project: str = "longrec", entity: str | None = None,
             mode: str = "auto") -> WandbLogger:
        """A W&B run that is not an experiment run (e.g. ``longrec compare``'s report)."""
        logger = cls.__new__(cls)
        logger.run, logger.mode, logger.error = None, "disabled", None
        logger._start(resolve_mode(mode), project=project, entity=entity, name=name, group=group, job_type=job_type,
                      tags=list(tags), config=dict(config), dir=str(run_dir))
        return logger

    def _start(self, mode: str, **init: Any) -> None:
        if mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")  # W&B's own terminal chatter; the CLI prints what matters
        try:
            import wandb

            self.run = wandb.init(**init, mode=mode, reinit="create_new",
                                  settings=wandb.Settings(console="off", x_disable_stats=True, quiet=True))
            self.mode = mode
        except Exception as exc:  # W&B must never cost the run
            self._fail("init", exc)

    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None) if self.active else None

    @property
    def url(self) -> str | None:
        return getattr(self.run, "url", None) if self.active and self.mode == "online" else None

    def _fail(self, what: str, exc: BaseException) -> None:
        self.error = f"{what}: {type(exc).__name__}: {exc}"
        warnings.warn(f"W&B {what} failed ({type(exc).__name__}: {exc}); W&B is off for the rest of this run, "
                      "the local run folder is complete", RuntimeWarning, stacklevel=3)
        run, self.run = self.run, None
        if run is not None and what != "finish":
            try:
                run.finish(exit_code=1)
            except Exception:
                pass

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self.active:
            return
        try:
            self.run.log(dict(metrics), step=step)
        except Exception as exc:
            self._fail("log", exc)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not self.active:
            return
        try:
            import wandb

            self.run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})
        except Exception as exc:
            self._fail("table", exc)

    def log_image(self, name: str, path: str | Path) -> None:
        if not self.active:
            return
        try:
            import wandb

            self.run.log({name: wandb.Image(str(path))})
        except Exception as exc:
            self._fail("image", exc)

    def log_artifact(self, path: str | Path, name: str, kind: str = "model",
                     aliases: Sequence[str] = ("latest",)) -> None:
        if not self.active:
            return
        try:
            import wandb

            artifact = wandb.Artifact(_artifact_name(name), type=kind)
            path = Path(path)
            if path.is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact, aliases=list(aliases))
        except Exception as exc:
            self._fail("artifact", exc)

    def set_summary(self, values: Mapping[str, Any]) -> None:
        if not self.active:
            return
        try:
            for key, value in values.items():
                self.run.summary[key] = value
        except Exception as exc:
            self._fail("summary", exc)

    def finish(self, exit_code: int = 0) -> None:
        if not self.active:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as exc:
            self._fail("finish", exc)
        self.run = None
