"""Cooperative stop of a running federation (Ctrl-C or SIGTERM).

Flower's simulation runs the ServerApp in a thread while the main thread drives the
engine; a ``KeyboardInterrupt`` there waits forever for the engine's worker threads. So
every engine (inline, fedkd's Ray pool, Flower's) turns SIGINT and SIGTERM into
:func:`request_stop`, and the strategy's round loop checks :func:`check_stop` before each
round and while it waits for replies (the inline engine before each client): the ServerApp
ends with :class:`RunInterrupted` (``summary.json`` says ``interrupted``, finished rounds
and their checkpoints are kept), and the engine shuts down as after any ServerApp exit. A
second signal raises at once. Outside the engines (config checks, data preparation)
:func:`sigterm_raises` makes SIGTERM raise :class:`SignalInterrupt` at once, as Python's
default SIGINT handler raises ``KeyboardInterrupt``. The command exits with
``128 + signal number`` (:func:`exit_code`): 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from fedkd.errors import FedKDError

_STOP = threading.Event()
_SIGNAL = [int(signal.SIGINT)]  # the signal that asked for the stop


def signal_label(signum: int) -> str:
    """How a stop signal is named in messages: ``Ctrl-C`` for SIGINT, else its name."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class RunInterrupted(FedKDError, KeyboardInterrupt):
    """The run was interrupted (Ctrl-C or SIGTERM); every finished round is kept.

    ``signum`` is the signal that stopped it (SIGINT unless told).
    """

    def __init__(self, message: str, *, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


class SignalInterrupt(KeyboardInterrupt):
    """A stop signal raised at once where the program is (SIGTERM outside the Ray engines, or
    a second signal), like the ``KeyboardInterrupt`` of SIGINT. Not an ``Exception``, so
    no ``except Exception`` on the way (a ClientApp's, an engine's) can swallow it."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.signum = int(signum)


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask the running federation to stop, because of signal ``signum``."""
    _SIGNAL[0] = int(signum)
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def stop_signal() -> int:
    """The signal of the last :func:`request_stop` (SIGINT when none named one)."""
    return _SIGNAL[0]


def clear_stop() -> None:
    _STOP.clear()
    _SIGNAL[0] = int(signal.SIGINT)


def check_stop(where: str) -> None:
    """Raise :class:`RunInterrupted` when a stop was requested."""
    if _STOP.is_set():
        signum = stop_signal()
        raise RunInterrupted(f"interrupted ({signal_label(signum)}) {where}", signum=signum)


def exit_code(exc: BaseException) -> int:
    """The process exit code for an interrupt: 128 + its signal (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`SignalInterrupt` in the main thread for the block, as SIGINT
    raises ``KeyboardInterrupt``; the previous handler comes back afterwards. Off the main
    thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SignalInterrupt("interrupted (SIGTERM)", signum=signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
