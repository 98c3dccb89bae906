"""Helpers of the tests that run ``python -m experiments`` in child processes (stop, kill, resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
"""the children's environment: W&B offline and quiet, one torch thread each"""


def longrec(*args: str, runs_dir: Path | None = None, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``python -m experiments ARGS [--runs-dir RUNS_DIR]`` started in the background (stderr kept)."""
    extra = ["--runs-dir", str(runs_dir)] if runs_dir is not None else []
    # A child inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt in it: something earlier
    # in a full test session leaves SIGINT ignored at the OS level (Python's getsignal still shows its handler),
    # so re-assert the handler here; an exec'd child then starts with the default, as from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return subprocess.Popen([sys.executable, "-m", "experiments", *args, *extra], env=dict(env or ENV), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """Wait for ``process``: its exit code and stderr."""
    _, err = process.communicate(timeout=600)
    return process.returncode, err


def only_run(runs_dir: Path) -> Path:
    """The one run folder (with a summary) in ``runs_dir``."""
    (run,) = [p for p in runs_dir.iterdir() if (p / "summary.json").exists()]
    return run


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())
