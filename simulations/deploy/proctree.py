"""Processes by pid through Linux ``/proc``: alive or not, their descendants, stopping them.

A pid alone may name another process once its own is gone, so a process the launchers
remember is a (pid, start time) pair (:func:`start_time`). Elsewhere than Linux these see
nothing (``/proc`` is absent) and the launchers stop only the processes they started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger("simulations.deploy_local")

STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (zombies only wait to be reaped)."""
    if Path("/proc").is_dir():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of ``/proc/<pid>/stat`` after the command name) of every live,
    non-zombie process (Linux ``/proc``; nothing elsewhere). Field 0 is the state, 1 the
    parent's pid, 2 the process group, 19 the start time."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry.name), fields


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (Linux ``/proc``; empty elsewhere)."""
    return [pid for pid, fields in live_stats() if int(fields[2]) == pgid]


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (``/proc/<pid>/stat``): with the pid, it
    names one process (a pid may be reused once its process is gone); None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def descendants(pids: Sequence[int]) -> list[tuple[int, str]]:
    """Live descendants of ``pids`` as (pid, start time) (Linux ``/proc``; else empty)."""
    children: dict[int, list[int]] = {}
    for pid, fields in live_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], list(pids)
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return [(pid, start) for pid in found if (start := start_time(pid)) is not None]


def stop_pids(processes: Sequence[tuple[int, str]]) -> None:
    """SIGTERM each (pid, start time) still running, SIGKILL it after
    :data:`STOP_GRACE_SECONDS`; a pid now held by another process is left alone."""

    def running() -> list[int]:
        return [pid for pid, start in processes if start_time(pid) == start]

    def send(pids: list[int], signum: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    if pids := running():
        logger.info("stopping pids %s, left behind by the stopped processes", pids)
        send(pids, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    send(running(), signal.SIGKILL)
