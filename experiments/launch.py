"""Data-parallel pretraining from the command line: ``longrec pretrain --nproc N`` and ``torchrun``.

``longrec pretrain --nproc N ...`` checks the command as always (one line, before any folder is
made), then runs torchrun's agent in this process, as ``torchrun --standalone --nproc_per_node N -m
experiments pretrain ...`` would: N processes on this machine. On M machines, start ``torchrun --nnodes M --node_rank K
--nproc_per_node N --rdzv_endpoint HOST:PORT -m experiments pretrain ...`` on each (K = 0 on HOST): rank 0
runs on HOST, and only HOST needs the run folder (``--resume``) and ``data.path``.

In every process ``llm_policy.distributed`` joins the group (gloo on CPU, NCCL on GPU). Rank 0 checks
the config, makes (or reopens, with ``--resume``) the run folder and prepares the data; the other
ranks receive the config, the run's place and resume point and the data from it
(``llm_policy.distributed.from_main``), and hold a :class:`FollowerRun`, which writes nothing: the run
folder, ``metrics.jsonl``, ``summary.json``, checkpoints, W&B and progress bars are rank 0's alone.
``llm_policy.pretrain.pretrain`` does the data-parallel training.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from experiments.config import ConfigError, ExperimentConfig
from experiments.run import RunPaths
from llm_policy import distributed

PARALLEL_JOB = "pretrain"
"""the one job that runs across processes"""


def check_command(command: str, nproc: int) -> None:
    """``--nproc N`` and a torchrun launch are for ``longrec pretrain`` only (one line, before any work)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1; got {nproc}")
    if command != PARALLEL_JOB and nproc > 1:
        raise ConfigError(f"--nproc {nproc} applies to `longrec pretrain` only: pretrain with `longrec pretrain "
                          f"--nproc {nproc} ...`, then `longrec {command} init_from=<its run folder>/checkpoints/"
                          f"pretrained/best ...`")
    if distributed.launched():
        if command != PARALLEL_JOB:
            raise ConfigError(f"torchrun runs `longrec pretrain` only (data-parallel CE pretraining); run "
                              f"`longrec {command}` as one process")
        if nproc > 1:
            raise ConfigError(f"--nproc {nproc} starts torchrun itself; under torchrun drop it "
                              "(--nproc_per_node sets the processes)")


def check_nproc(job: str, cfg: ExperimentConfig, nproc: int) -> None:
    """What cannot be pretrained in ``nproc`` > 1 processes: MovieLens, user-level DP, another job."""
    if nproc <= 1:
        return
    if job != PARALLEL_JOB:
        raise ConfigError(f"{nproc} processes run `longrec pretrain` only; this is a `longrec {job}` run")
    if cfg.data.source != "simulator":
        raise ConfigError(f"{nproc} processes pretrain on simulator logs (data.source=simulator) only; MovieLens "
                          f"next-item pretraining (data.source={cfg.data.source}) runs in one process: drop --nproc")
    if cfg.pretrain.dp.enabled:
        raise ConfigError(f"user-level DP pretraining (pretrain.dp) runs in one process, not {nproc}: drop --nproc "
                          "or pretrain.dp")


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` (what each of the processes runs)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif name.startswith("--np") and "--nproc".startswith(name):  # argparse takes --npr for --nproc too
            skip = "=" not in arg
        else:
            out.append(arg)
    return out


def spawn(argv: Sequence[str], nproc: int) -> int:
    """Run ``longrec <argv>`` (without ``--nproc``) in ``nproc`` processes on this machine: torchrun's
    ``--standalone --nproc_per_node nproc -m experiments ...``, its agent in this process. Returns 0, 130 when
    stopped (Ctrl-C / SIGTERM: the ranks stop and rank 0 marks the run interrupted), 1 when a rank failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the machine's cores shared among the processes (torchrun would set 1, with a banner); torch_threads wins
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "experiments", *without_nproc(argv)]))
    except SignalException:
        return 130
    except ChildFailedError as exc:  # each rank has printed its own error
        codes = ", ".join(f"rank {rank}: exit code {failure.exitcode}" for rank, failure in sorted(exc.failures.items()))
        print(f"longrec pretrain: a rank failed and the others were stopped ({codes}); the run continues from its "
              "last finished epoch with `longrec pretrain --resume RUN_DIR`", file=sys.stderr)
        return 1
    return 0


class FollowerRun(RunPaths):
    """A rank > 0's stand-in for rank 0's :class:`experiments.run.Run`: the same config, folder and resume
    point, and no writes (every logging and summary call does nothing)."""

    def __init__(self, cfg: ExperimentConfig, path: str | Path, job_type: str,
                 resume: Mapping[str, Any] | None) -> None:
        self.cfg, self.path, self.job_type = cfg, Path(path), job_type
        self.name = self.path.name
        self.resume = dict(resume) if resume is not None else None
        self.wandb = None

    @property
    def summary(self) -> dict[str, Any]:
        return {}

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Nothing: rank 0 logs."""

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Nothing: rank 0 logs."""

    def log_plot(self, name: str, path: str | Path) -> None:
        """Nothing: rank 0 logs."""

    def log_checkpoint(self, path: str | Path | None, final: bool = True) -> None:
        """Nothing: rank 0 records checkpoints."""

    def update_summary(self, **values: Any) -> None:
        """Nothing: rank 0 writes the summary."""

    def __enter__(self) -> FollowerRun:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@contextmanager
def open_run(open_folder: Callable[[], Any], cfg: ExperimentConfig) -> Iterator[Any]:
    """The run of this process: on rank 0 (and in one process) the one ``open_folder()`` makes or reopens,
    used as its context (finished / failed / interrupted); on the other ranks a :class:`FollowerRun` of it."""
    opened: list[Any] = []

    def on_main() -> tuple[str, str, dict[str, Any] | None]:
        opened.append(open_folder())
        return str(opened[0].path), opened[0].job_type, opened[0].resume

    path, job_type, resume = distributed.from_main(on_main)
    with (opened[0] if opened else FollowerRun(cfg, path, job_type, resume)) as run:
        yield run
