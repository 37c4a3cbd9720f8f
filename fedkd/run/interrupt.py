"""Cooperative stop of a running federation (Ctrl-C under the Ray engine).

Flower's simulation runs the ServerApp in a thread while the main thread drives the
engine; a ``KeyboardInterrupt`` there waits forever for the engine's worker threads. So
the runner turns SIGINT into :func:`request_stop`, and the strategy's round loop checks
:func:`check_stop` while it waits for replies: the ServerApp ends with
:class:`RunInterrupted` (``summary.json`` says ``failed``, finished rounds are kept), and
the engine shuts down as after any ServerApp exit.
"""

from __future__ import annotations

import threading

from fedkd.errors import FedKDError

_STOP = threading.Event()


class RunInterrupted(FedKDError, KeyboardInterrupt):
    """The run was interrupted (Ctrl-C); every finished round is kept."""


def request_stop() -> None:
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def check_stop(where: str) -> None:
    """Raise :class:`RunInterrupted` when a stop was requested."""
    if _STOP.is_set():
        raise RunInterrupted(f"interrupted (Ctrl-C) {where}")
