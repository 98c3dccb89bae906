"""Device selection for training and evaluation: ``"auto"`` is CUDA when present, else CPU.

Same convention as Stable-Baselines3's ``get_device("auto")``, with the
accepted names validated up front so a typo fails before a run starts.
"""

from __future__ import annotations

import torch

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` if available else ``cpu``; ``"cuda:1"``, ``"cpu"``, a ``torch.device`` as given.

    Raises ``ValueError`` for an unknown name, or for CUDA/MPS asked for on a machine without it.
    """
    if isinstance(device, torch.device):
        resolved = device
    else:
        name = str(device).strip().lower()
        kind = name.split(":", 1)[0]
        if kind not in DEVICE_KINDS:
            raise ValueError(f"device={device!r} is not known; valid: {DEVICE_KINDS} (optionally 'cuda:<index>')")
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        resolved = torch.device(name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(resolved)!r} asked for CUDA, but torch sees no GPU; use 'auto' or 'cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(resolved)!r} asked for MPS, which this machine lacks; use 'auto' or 'cpu'")
    return resolved


def describe_device(device: torch.device) -> str:
    """Human-readable name, e.g. ``cuda:0 (NVIDIA H200)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"
