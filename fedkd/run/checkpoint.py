"""Checkpoints of a run, written atomically into its run directory, and resuming from them.

A checkpoint (``checkpoint.pt``) holds everything the next round depends on:

* ``round``: the last finished round; ``arrays``: what the strategy carries between rounds;
* ``student``: the student's weights (its optimizer is rebuilt every round by design, see
  :func:`fedkd.distill.distill`, so there is no optimizer state to keep);
* ``strategy``: :meth:`strategies.base.FedKDStrategy.checkpoint_state` (consensus targets,
  FedDF's per-architecture models, the privacy controller with its accountant ledger and
  noise generator, ...);
* ``rng``: Python's, NumPy's and torch's global generator states;
* ``clients``: every client's persistent ``context.state`` (its own model, its DP-SGD
  accountant history), fetched with a ``state-export`` query, so a resumed run restores
  them into fresh simulated (or real) nodes by partition id, not by node id;
* ``config``: the run's config, checked against the resumed one.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
VERSION = 1
#: Top-level config keys a resumed run may change: how long it runs and where and how it
#: runs, never what it computes.
RESUMABLE_KEYS = (
    "num_rounds",
    "round_timeout",
    "backend",
    "progress",
    "verbose",
    "checkpoint",
    "report",
    "tracker",
    "trackers",
)


def rng_states() -> dict[str, Any]:
    """The global generator states (Python, NumPy, torch CPU)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` atomically (temporary file, fsync, rename):
    a crash while writing leaves the previous checkpoint intact."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"version": VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read a run directory's checkpoint, or fail naming what is wrong."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not Path(run_dir).is_dir():
        raise ConfigError(f"resume={run_dir}: no such run directory")
    if not path.is_file():
        raise ConfigError(
            f"resume={run_dir}: no {CHECKPOINT_FILE} in it (the run wrote none: set "
            "checkpoint.every >= 1, or it stopped before its first checkpoint)"
        )
    try:
        # The file is the user's own run output; it holds pickled strategy state.
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"resume={run_dir}: {CHECKPOINT_FILE} is unreadable ({exc})") from exc
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ConfigError(
            f"resume={run_dir}: {CHECKPOINT_FILE} has format version "
            f"{state.get('version') if isinstance(state, dict) else '?'}, expected {VERSION}"
        )
    return state


def check_resumable(saved: dict[str, Any], config: dict[str, Any], run_dir: Path) -> None:
    """A resumed run must compute the same thing: only :data:`RESUMABLE_KEYS` may differ."""
    ignored = {*RESUMABLE_KEYS, "resume"}
    for key in sorted(set(saved) | set(config)):
        if key in ignored:
            continue
        if key not in saved:  # a setting added to fedkd after the run was checkpointed
            logger.warning(
                "resume: %s is not in the checkpointed run's config; using %r", key, config[key]
            )
            continue
        if saved.get(key) != config.get(key):
            raise ConfigError(
                f"resume={run_dir}: {key} differs from the checkpointed run "
                f"({saved.get(key)!r} there, {config.get(key)!r} now); a resumed run may only "
                f"change {', '.join(RESUMABLE_KEYS)}"
            )
