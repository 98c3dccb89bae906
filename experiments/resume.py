"""``longrec train --resume RUN`` (and ``longrec pretrain --resume RUN``): continue a stopped run in its own folder.

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

A ``longrec pretrain`` run continues from its last finished epoch (``checkpoints/pretrained/last.pt``,
``llm_policy.pretrain.STATE_FILE``), also in another number of processes (``--nproc``); a ``train`` run
stopped during its pretraining continues that pretraining the same way, then trains PPO. MovieLens and
user-level DP pretraining do not resume.

``resume=`` in a config means the same; it takes the run folder or a checkpoint inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.registry import agent_info
from experiments.config import ConfigError, ExperimentConfig, load_config
from experiments.run import Run, live_status, read_json

RESUMABLE_JOBS = ("train", "quickstart", "pretrain")
COMMAND_OF_JOB = {"train": "train", "quickstart": "train", "pretrain": "pretrain"}
"""the command that continues a run of each job"""


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


def resumable_run(path: str | Path, command: str = "train") -> tuple[Path, ExperimentConfig, dict[str, Any]]:
    """``(run folder, its config, its summary)`` after checking that ``longrec <command> --resume`` can continue it."""
    folder = run_folder_of(path)
    summary = read_json(folder / "summary.json")
    status = live_status(summary)
    job = summary.get("job_type", "train")
    if job not in RESUMABLE_JOBS:
        raise ConfigError(f"--resume {str(folder)!r}: a `longrec {job}` run has no training to continue "
                          f"(resumable: {', '.join(RESUMABLE_JOBS)} runs)")
    if COMMAND_OF_JOB[job] != command:
        raise ConfigError(f"--resume {str(folder)!r}: a `longrec {job}` run continues with "
                          f"`longrec {COMMAND_OF_JOB[job]} --resume {folder}`")
    if status == "finished" and job == "pretrain":
        raise ConfigError(f"--resume {str(folder)!r}: the run has finished; its policy is "
                          f"{folder / 'checkpoints' / 'pretrained' / 'best'} (start PPO from it with init_from=)")
    if status == "finished":
        raise ConfigError(f"--resume {str(folder)!r}: the run has finished; train longer in a new run "
                          "(e.g. init_from=<its checkpoints/final_policy>)")
    if status == "running":
        raise ConfigError(f"--resume {str(folder)!r}: the run is still running (pid {summary.get('pid')} on "
                          f"{summary.get('host')}); stop it first (Ctrl-C) or wait")
    cfg = load_config(folder / "config.yaml")
    if job == "pretrain":
        if cfg.data.source == "movielens":
            raise ConfigError(f"--resume {str(folder)!r}: MovieLens pretraining (data.source=movielens) keeps no "
                              "training state to continue from; rerun it")
        if cfg.pretrain.dp.enabled:
            raise ConfigError(f"--resume {str(folder)!r}: user-level DP pretraining (pretrain.dp) does not resume "
                              "(its privacy accountant is not checkpointed); rerun it")
    elif agent_info(cfg.agent).trainer != "ppo":
        raise ConfigError(f"--resume {str(folder)!r}: agent {cfg.agent} does not train with PPO; only PPO runs "
                          "resume (rerun the others)")
    return folder, cfg, summary


def reopen_run(folder: Path, cfg: ExperimentConfig, summary: dict[str, Any]) -> Run:
    """Reopen a run checked by :func:`resumable_run` for the rest of its training (see the module docstring)."""
    from agents.checkpoint import find_checkpoint, load_checkpoint

    if summary.get("job_type") == "pretrain":
        return Run.reopen(folder, cfg, keep_metrics_lines=summary.get("pretrain_first_metrics_line", 0),
                          from_epoch=pretrained_epochs(folder), from_status=live_status(summary))
    checkpoint = find_checkpoint(folder / "checkpoints" / "ppo")
    if checkpoint is not None:
        payload = load_checkpoint(checkpoint)
        step, keep = int(payload["num_timesteps"]), payload.get("extra", {}).get("metrics_lines")
    else:  # stopped before PPO's first checkpoint: PPO starts again; pretraining is kept if it finished, else continued
        step, keep = 0, summary.get("ppo_first_metrics_line", summary.get("pretrain_first_metrics_line"))
    return Run.reopen(folder, cfg, keep_metrics_lines=keep, from_step=step, from_status=live_status(summary))


def pretrained_epochs(folder: Path) -> int:
    """The last epoch the run's pretraining finished and saved in ``checkpoints/pretrained`` (0: none)."""
    from llm_policy.pretrain import STATE_FILE, read_training_state

    path = folder / "checkpoints" / "pretrained" / STATE_FILE
    if not path.is_file():
        return 0
    try:
        return int(read_training_state(path)["epoch"])
    except ValueError as exc:
        raise ConfigError(f"--resume {str(folder)!r}: {exc}") from None
