"""Data-parallel training across processes, as launched by ``torchrun`` (PyTorch DDP, Li et al. 2020).

``torchrun --nproc_per_node N`` (``python -m torch.distributed.run``) starts N copies of a program with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init` reads them and joins the process group: CPU tensors travel over gloo, CUDA tensors over
NCCL (``"cpu:gloo,cuda:nccl"`` on a machine with a GPU for each of its processes, ``"gloo"`` otherwise), and
each process takes the GPU of its ``LOCAL_RANK``; with fewer GPUs than processes, ``device="auto"`` trains on
the CPU and ``device="cuda"`` is refused (two ranks cannot share one GPU under NCCL). Without those
variables (or with ``WORLD_SIZE=1``) nothing is initialised and every helper here is the identity of one
process: rank 0 of 1, :func:`is_main` true, reductions return their input. So code written with these
helpers runs unchanged, bit for bit, in one process.

Rank 0 is the main process: it alone writes files and logs; :func:`from_main` runs a step there (reading
a run folder, preparing data) and hands its result, or its exception, to every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from llm_policy.device import resolve_device

__all__ = ["launched", "init", "active", "rank", "world_size", "local_rank", "local_world_size", "gpu_per_process",
           "is_main", "rank_device",
           "all_reduce_sum", "broadcast_object", "gather_object", "from_main", "cleanup"]

T = TypeVar("T")

TIMEOUT = timedelta(minutes=30)
"""how long a collective waits for the other ranks (torch's default; a rank that died is caught by torchrun)"""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or alike) as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> bool:
    """Join the process group described by the environment (once); returns :func:`active`.

    A no-op without a distributed launch, or when the group is already initialised.
    """
    if launched() and not dist.is_initialized():
        cuda = gpu_per_process()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    return active()


def local_world_size() -> int:
    """Processes of this launch on this machine (torchrun's ``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``, else 1)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def gpu_per_process() -> bool:
    """Whether this machine has a GPU for each of its processes (NCCL needs one GPU per rank)."""
    return torch.cuda.is_available() and torch.cuda.device_count() >= local_world_size()


def active() -> bool:
    """Whether this process is one rank of an initialised group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in one process)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 in one process)."""
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 in one process)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints, metrics, summaries, W&B and progress bars."""
    return rank() == 0


def rank_device(device: str | torch.device = "auto") -> torch.device:
    """This rank's device for ``device`` (a name or ``torch.device``, see ``llm_policy.device.resolve_device``).

    In one process: ``resolve_device(device)``. As one of several ranks, ``"auto"`` and ``"cuda"`` without an
    index become this rank's GPU (``cuda:LOCAL_RANK``) when the machine has a GPU per process; otherwise
    ``"auto"`` is the CPU, and ``"cuda"`` raises ``ValueError`` naming the counts.
    """
    if not active():
        return resolve_device(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda", local_rank()) if gpu_per_process() else torch.device("cpu")
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        if not gpu_per_process():
            raise ValueError(
                f"device={str(device)!r} with {local_world_size()} processes on this machine needs a GPU per process "
                f"(NCCL cannot share one), but torch sees {torch.cuda.device_count()}; use device=auto or cpu, or at "
                f"most {torch.cuda.device_count()} processes per machine")
        return torch.device("cuda", local_rank())
    return resolved


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (in float64, the same on every rank); ``values`` in one process."""
    if not active():
        return [float(v) for v in values]
    total = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; the others pass anything, e.g. None)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj: Any) -> list[Any] | None:
    """The ``obj`` of every rank, in rank order, on rank 0 (None on the others); ``[obj]`` in one process."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def from_main(step: Callable[[], T]) -> T:
    """Run ``step`` on rank 0 only and return its result on every rank; if it raised, every rank raises
    the same exception (so a check that fails on rank 0 stops all ranks alike)."""
    if not active():
        return step()
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = step()
        except Exception as exc:  # noqa: BLE001 - handed to every rank, then raised there
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def cleanup() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
