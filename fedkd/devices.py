"""Device and thread settings for the process a client or the server runs in."""

from __future__ import annotations

import logging

import torch

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

DEVICE_NAMES = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> torch.device:
    """Turn ``cpu`` / ``cuda`` / ``auto`` into a torch device.

    ``cuda`` without a visible GPU is an error (a silent CPU fallback would make a GPU
    benchmark meaningless); ``auto`` picks CUDA when available.
    """
    if name not in DEVICE_NAMES:
        raise ConfigError(f"backend.device must be one of {DEVICE_NAMES}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("backend.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def set_torch_threads(num_threads: int) -> None:
    """Set torch's intra-op threads once per process.

    Ray actors inherit a thread pool sized for the whole machine; with several actors per
    machine that oversubscribes the cores, so each actor uses what its resources allow.
    """
    # compared with torch's own setting, not a cache of ours, which anything else calling
    # torch.set_num_threads would make stale
    if num_threads < 1 or torch.get_num_threads() == num_threads:
        return
    torch.set_num_threads(num_threads)
    logger.debug("torch threads set to %s", num_threads)
