"""The terminal of a run: one rich console on stderr for everything that is not a result.

Log lines, the live progress display and warnings all go through :func:`console`, so rich
prints log lines above the live region instead of gluing them onto the bar. The results
(the table at the end) go to stdout (:func:`results_console`): ``python -m simulations.run
> out.txt`` keeps the results, and the terminal keeps the progress and the logs.

:func:`phase` names what the run is doing (building the data, starting Ray, round k of n)
on the live display; without one it is a debug log line.

Hydra installs :class:`ConsoleLogHandler` from ``configs/hydra/job_logging/fedkd.yaml``;
the file handler beside it writes every line, with its logger and date, to ``run.log``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any, Protocol

from rich.console import Console
from rich.logging import RichHandler

logger = logging.getLogger(__name__)

_console: Console | None = None
_results: Console | None = None


class _PhaseDisplay(Protocol):
    def set_phase(self, text: str) -> None: ...


_display: _PhaseDisplay | None = None


def console() -> Console:
    """The process's console for diagnostics (stderr): logs, progress, warnings."""
    global _console
    if _console is None:  # writes to whatever sys.stderr is at the time (pytest swaps it)
        _console = _sized(Console(stderr=True))
    return _console


def results_console() -> Console:
    """The console results are printed on (stdout)."""
    global _results
    if _results is None:
        _results = _sized(Console())
    return _results


#: Columns of a console that is not a terminal (a file, a pipe, CI's log): rich's 80 would
#: fold the results table's labels and the log lines.
FILE_WIDTH = 120


def _sized(out: Console) -> Console:
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = FILE_WIDTH
    return out


class ConsoleLogHandler(RichHandler):
    """Log records on :func:`console`: time, level and message, without the logger's path
    (``run.log`` keeps it), printed above a live progress display when one is shown."""

    def __init__(self, level: int | str = logging.NOTSET, **kwargs: Any) -> None:
        kwargs.setdefault("show_path", False)
        kwargs.setdefault("markup", False)
        kwargs.setdefault("rich_tracebacks", False)
        kwargs.setdefault("log_time_format", "%H:%M:%S")
        super().__init__(level, console=console(), **kwargs)
        self.setFormatter(logging.Formatter("%(message)s"))  # time and level are columns

    def emit(self, record: logging.LogRecord) -> None:
        """On a terminal, rich's columns; elsewhere (a file, a pipe, CI) one plain line per
        record, never folded, so a path in it stays whole."""
        if self.console.is_terminal:
            super().emit(record)
            return
        try:
            moment = time.strftime("%H:%M:%S", time.localtime(record.created))
            self.console.print(
                f"{moment} {record.levelname:<8} {self.format(record)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        except Exception:
            self.handleError(record)


def attach_display(display: _PhaseDisplay | None) -> _PhaseDisplay | None:
    """Make ``display`` the one :func:`phase` updates (None: none); returns the previous."""
    global _display
    previous, _display = _display, display
    return previous


def active_display() -> _PhaseDisplay | None:
    """The live display :func:`phase` updates, if one is shown."""
    return _display


def phase(text: str) -> None:
    """Say what the run is doing now, on the live display (and in ``run.log``)."""
    logger.debug("%s", text)
    if _display is not None:
        _display.set_phase(text)


#: Third-party warnings that say nothing a fedkd user can act on, by message (regular
#: expressions, matched at the start). Each is explained where it is silenced.
NOISE = (
    # torch: TorchScript export still works in 2.x; fedkd checks the exported file.
    (r"`torch\.jit\.", DeprecationWarning),
    (r"torch\.jit\.", DeprecationWarning),
    # Ray: the accelerator env-var override notice, about a default fedkd does not rely on.
    (r"Tip: In future versions of Ray", FutureWarning),
    # Flower: run_simulation is deprecated in 1.42 but remains its in-process entry point.
    (r".*run_simulation", DeprecationWarning),
)


def quiet_third_party_warnings() -> None:
    """Silence :data:`NOISE` in this process, and show the warnings that remain through
    the console (one line each) instead of as raw ``warnings`` output."""
    for message, category in NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.captureWarnings(True)
