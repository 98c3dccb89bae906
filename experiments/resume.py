"""``longrec train --resume RUN``: continue a stopped training run in its own folder.

A run stopped by Ctrl-C / SIGTERM (status ``interrupted``), by ``kill -9`` or a crash of the
machine (status ``running``, its process gone: ``died``) or by an error (``failed``) continues
where its last PPO checkpoint (``checkpoints/ppo/last.pt``) left it:

* with the run's own ``config.yaml`` (overrides other than progress output are refused);
* in the same folder: ``metrics.jsonl`` is cut back to the rows the checkpoint had seen, so the
  curve is one curve; ``summary.json`` goes back to ``running`` (then ``finished``) and lists the
  resume under ``resumes``; the W&B run is resumed by its id;
* without repeating log generation or pretraining when the run already has its pretrained policy;
* to exactly the budget, with the numbers of an uninterrupted run (the checkpoint holds the
  policy, optimizer, random and simulator state of a rollout boundary).

``resume=`` in a config means the same; it takes the run folder or a checkpoint inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.registry import agent_info
from experiments.config import ConfigError, ExperimentConfig, load_config
from experiments.run import Run, live_status, read_json

RESUMABLE_JOBS = ("train", "quickstart")


def run_folder_of(path: str | Path) -> Path:
    """The run folder holding ``path`` (the folder itself, or a checkpoint file or folder inside it)."""
    given = Path(path)
    if not given.exists():
        raise ConfigError(f"--resume {str(path)!r}: no such run folder or checkpoint")
    for folder in (given, *given.resolve().parents) if given.is_dir() else given.resolve().parents:
        if (folder / "summary.json").is_file() and (folder / "config.yaml").is_file():
            return folder if folder != given.resolve() else given
    raise ConfigError(f"--resume {str(path)!r} is not a run folder (summary.json + config.yaml) nor inside one; "
                      "give the folder that `longrec train` printed as 'run folder:'")


def resumable_run(path: str | Path) -> tuple[Path, ExperimentConfig, dict[str, Any]]:
    """``(run folder, its config, its summary)`` after checking that it can be continued."""
    folder = run_folder_of(path)
    summary = read_json(folder / "summary.json")
    status = live_status(summary)
    job = summary.get("job_type", "train")
    if job not in RESUMABLE_JOBS:
        raise ConfigError(f"--resume {str(folder)!r}: a `longrec {job}` run has no training to continue "
                          f"(resumable: {', '.join(RESUMABLE_JOBS)} runs)")
    if status == "finished":
        raise ConfigError(f"--resume {str(folder)!r}: the run has finished; train longer in a new run "
                          "(e.g. init_from=<its checkpoints/final_policy>)")
    if status == "running":
        raise ConfigError(f"--resume {str(folder)!r}: the run is still running (pid {summary.get('pid')} on "
                          f"{summary.get('host')}); stop it first (Ctrl-C) or wait")
    cfg = load_config(folder / "config.yaml")
    if agent_info(cfg.agent).trainer != "ppo":
        raise ConfigError(f"--resume {str(folder)!r}: agent {cfg.agent} does not train with PPO; only PPO runs "
                          "resume (rerun the others)")
    return folder, cfg, summary


def reopen_run(folder: Path, cfg: ExperimentConfig, summary: dict[str, Any]) -> Run:
    """Reopen a run checked by :func:`resumable_run` for the rest of its training (see the module docstring)."""
    from agents.checkpoint import find_checkpoint, load_checkpoint

    checkpoint = find_checkpoint(folder / "checkpoints" / "ppo")
    if checkpoint is not None:
        payload = load_checkpoint(checkpoint)
        step, keep = int(payload["num_timesteps"]), payload.get("extra", {}).get("metrics_lines")
    else:  # stopped before PPO's first checkpoint: PPO starts again; pretraining is kept if it finished
        step, keep = 0, summary.get("ppo_first_metrics_line")
    return Run.reopen(folder, cfg, keep_metrics_lines=keep, from_step=step, from_status=live_status(summary))
