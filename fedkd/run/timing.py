"""Where a run's wall time goes: ``summary.json``'s ``startup_seconds``, ``rounds_seconds``
and ``outputs_seconds``.

* ``startup_seconds``: from the start of the process to the rounds (the first round's first
  message is the next thing sent): imports, Hydra, the config checks, data, models, the
  engine (Ray and its actors), a resumed run's checkpoint. A later run in the same process
  (a Hydra sweep's jobs, tests) counts from :func:`start_run` instead.
* ``rounds_seconds``: the rounds, up to the last round's evaluation (the sum of the rows'
  ``seconds``).
* ``outputs_seconds``: everything after: the privacy summary and audit, the student's export,
  ``summary.json``, the plots and the report, and the engine's shutdown
  (:func:`fedkd.run.results.record_outputs_seconds` completes it once the engine returned).

The process start comes from Linux's ``/proc`` (see :func:`_process_start` for a process
that ``exec``'d Python late); elsewhere from when ``fedkd`` was first
imported (:data:`fedkd.IMPORTED_AT`; ``simulations.run`` imports Hydra before it).
"""

from __future__ import annotations

import os
import time

from fedkd import IMPORTED_AT as _IMPORTED
from fedkd import IMPORTED_CPU as _IMPORTED_CPU

#: The current run's start, on the ``time.perf_counter`` clock (None: not started yet).
_run_origin: float | None = None
_runs_started = 0


def process_age_seconds() -> float | None:
    """Seconds since this process started (``/proc/self/stat``'s start time against
    ``/proc/uptime``, 10 ms resolution); None where ``/proc`` does not say."""
    try:
        with open("/proc/self/stat") as handle:
            stat = handle.read()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        # fields after the command name (which may hold spaces): field 22 is the start time
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    # The process began before fedkd was imported; anything else is a /proc that does not
    # belong to this process's clock (some sandboxes), so it is not used.
    return age if age >= time.perf_counter() - _IMPORTED - 0.05 else None


def start_run() -> None:
    """Start the clock of a run: at the process's start for its first run, now for later
    ones (so a sweep's second job does not count the first one as its start-up)."""
    global _run_origin, _runs_started
    _run_origin = _process_start() if _runs_started == 0 else time.perf_counter()
    _runs_started += 1


def run_origin() -> float:
    """The current run's start on the ``time.perf_counter`` clock (the process's start when
    :func:`start_run` was not called: a ServerApp under ``flwr run``)."""
    return _process_start() if _run_origin is None else _run_origin


def seconds_since_start() -> float:
    """Seconds since the current run started (:func:`run_origin`)."""
    return time.perf_counter() - run_origin()


def _process_start() -> float:
    """The process's start, or the interpreter's where the process is older than it.

    A shell may run Python by ``exec`` in a process that already waited on others
    (``bash -c 'pip install ... && python -m simulations.run'`` runs the last command
    in place), and ``/proc`` dates the process, not the ``exec``. The imports before
    fedkd's are CPU-bound, so a process far older at fedkd's import than the CPU time it
    had used (more than twice, plus 5 s) is counted from fedkd's import minus that CPU
    time instead: an estimate that leaves out what the interpreter waited for the CPU."""
    age = process_age_seconds()
    if age is None:
        return _IMPORTED
    start = time.perf_counter() - age
    if _IMPORTED - start > 2 * _IMPORTED_CPU + 5:
        return _IMPORTED - _IMPORTED_CPU
    return start
