"""``python -m simulations.flwr_local [overrides]``: ``flwr run .`` that leaves nothing running.

``flwr run .`` on Flower's ``local`` connection starts a detached simulation SuperLink
(``flower-superlink --simulation``, ``flwr/cli/local_superlink.py``) and, by design, leaves
it running after the run for the next one, with its ``flower-superexec`` and the finished
``flwr-simulation`` (a zombie until the next run). Flower has no command that stops it
(``flwr stop`` stops a run). This launcher runs the same app the same way, on a simulation
SuperLink it starts itself with the same flags, on free ports of 127.0.0.1, and stops it
and everything below it (superexec, ``flwr-simulation``, Ray) by pid when the run ends,
also on error, Ctrl-C or SIGTERM:

1. compose the config and build the run once (bad input exits 2, nothing started);
2. start the SuperLink (log ``<run dir>/logs/superlink.log``), with a private
   ``FLWR_HOME`` (a temporary directory, removed at the end);
3. ``flwr run <repo> --federation-config num-supernodes=<num_clients> --run-config
   'overrides="..." out-dir="<run dir>"' --stream``, echoed (``logs/flwr-run.log``);
4. the outcome from ``flwr ls`` and ``summary.json``; stop every process; print the
   results table of a normal run (:func:`fedkd.run.progress.print_summary`).

The run directory is a normal run's, ``outputs/<date>/<time>-<strategy>-<dataset>``
(``flwr.out_dir=<dir>`` chooses another); the ServerApp writes ``run.log`` and
``checkpoint.pt`` there as a normal run does. Options, written ``flwr.<key>=<value>``
beside the Hydra overrides: ``flwr.out_dir`` (the run directory), ``flwr.timeout``
(seconds for the run; default none). Exit codes: 0 completed, 1 failed or timed out, 2
invalid configuration, 130 SIGINT, 143 SIGTERM.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkd.apps.flwr_run import LAUNCHER_VAR, default_run_dir
from fedkd.errors import ConfigError
from fedkd.run.results import check_fresh_run_dir
from simulations.deploy.options import run_config_argument, validate_config
from simulations.deploy.orchestrate import (
    LOGS_DIR,
    REPO_ROOT,
    RunResult,
    _settle,
    ended,
    launcher_main,
    run_and_settle,
)
from simulations.deploy.processes import (
    CONNECTION,
    LocalFederation,
    free_port,
)

logger = logging.getLogger("simulations.flwr_local")  # also as __main__

OPTION_PREFIX = "flwr."
_OPTION_KEYS = ("out_dir", "timeout")

#: Lines Flower 1.42 prints on every simulation that are wrong under this launcher; they
#: are not echoed (``logs/flwr-run.log`` keeps them).
HIDDEN_LINES = (
    # flwr/simulation/app.py logs it unconditionally, before the real size; this launcher
    # always sets num-supernodes to num_clients, which the next line reports.
    "Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
    # Ray's actors being shut down at the end of every simulation, logged as a warning.
    "Manually terminating ClientAppActor",
)


@dataclass(frozen=True)
class LocalOptions:
    """The ``flwr.*`` launcher options."""

    out_dir: Path | None = None
    timeout_seconds: float | None = None


@dataclass(kw_only=True)
class LocalRunResult(RunResult):
    """A ``flwr_local`` run, with the pid of the SuperLink it started (and stopped)."""

    superlink_pid: int


def split_arguments(argv: Sequence[str]) -> tuple[list[str], LocalOptions]:
    """Separate ``flwr.<key>=<value>`` launcher options from the Hydra overrides."""
    overrides: list[str] = []
    values: dict[str, str] = {}
    for arg in argv:
        if not arg.startswith(OPTION_PREFIX):
            overrides.append(arg)
            continue
        key, sep, value = arg[len(OPTION_PREFIX) :].partition("=")
        if not sep or key not in _OPTION_KEYS or not value:
            raise ConfigError(
                f"launcher option {arg!r}: expected flwr.<key>=<value> with key one of "
                f"{', '.join(_OPTION_KEYS)}"
            )
        values[key] = value
    timeout: float | None = None
    if "timeout" in values:
        try:
            timeout = float(values["timeout"])
        except ValueError:
            raise ConfigError(
                f"flwr.timeout must be a number of seconds, got {values['timeout']!r}"
            ) from None
        if timeout <= 0:
            raise ConfigError(f"flwr.timeout must be > 0, got {timeout:g}")
    out_dir = Path(values["out_dir"]).expanduser() if "out_dir" in values else None
    return overrides, LocalOptions(out_dir=out_dir, timeout_seconds=timeout)


def run_local(
    overrides: Sequence[str],
    *,
    out_dir: Path | None = None,
    timeout_seconds: float | None = None,
    echo: bool = False,
) -> LocalRunResult:
    """Run the app once with ``flwr run`` on a simulation SuperLink this call owns.

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides, as for ``python -m simulations.run``; ``num_clients`` is the
        number of simulated SuperNodes.
    out_dir : Path, optional
        The run directory; default :func:`fedkd.apps.flwr_run.default_run_dir`.
    timeout_seconds : float, optional
        For the run's stream; an unfinished run is stopped and ends as ``timeout``.
    echo : bool, default False
        Print ``flwr run --stream``'s output as it arrives (less :data:`HIDDEN_LINES`).

    Raises
    ------
    ConfigError
        Bad overrides, before any process starts.
    DeployError
        A step failed (the message names it); every started process has been stopped.
    DeployInterrupted
        SIGINT or SIGTERM; every started process has been stopped.

    From the SuperLink's start on, every exit leaves ``summary.json`` in the run directory
    (:func:`simulations.deploy.settle_summary`).
    """
    started = time.monotonic()
    cfg, student = validate_config(overrides)
    run_dir = (out_dir or default_run_dir(cfg)).resolve()
    check_fresh_run_dir(run_dir)
    home = Path(tempfile.mkdtemp(prefix="fedkd-flwr-"))  # FLWR_HOME: config, FAB installs
    try:
        run_config = run_config_argument(overrides, run_dir, spill_dir=home)
        federation = LocalFederation(
            home,
            port=free_port(),
            credentials=None,
            echo=echo,
            logs_dir=run_dir / LOGS_DIR,
            env={LAUNCHER_VAR: "simulations.flwr_local"},
            hidden_lines=HIDDEN_LINES,
        )
        return run_and_settle(
            federation,
            lambda: _run(
                federation, cfg["num_clients"], run_config, run_dir, timeout_seconds=timeout_seconds
            ),
            launcher="flwr_local",
            timeout=("flwr.timeout", timeout_seconds),
            settle=lambda outcome: _settle(run_dir, cfg, student, outcome, started),
            started=started,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(
    federation: LocalFederation,
    num_clients: int,
    run_config: str,
    run_dir: Path,
    *,
    timeout_seconds: float | None,
) -> LocalRunResult:
    superlink = federation.start_simulation_superlink(cwd=Path.cwd())
    logger.info("SuperLink listening on 127.0.0.1:%s", federation.port)
    run_id, exit_status = federation.submit(
        REPO_ROOT,
        run_config,
        timeout=timeout_seconds,
        federation_config=f"num-supernodes={num_clients}",
    )
    if exit_status is None:  # the stream outlived flwr.timeout
        status: dict[str, Any] = {"status": "timeout", "status-details": "flwr.timeout reached"}
        if run_id is not None:
            federation.flwr("stop", str(run_id), CONNECTION)
    else:
        status = federation.wait_finished(run_id, timeout=30.0)
    return LocalRunResult(
        status=str(status.get("status", "unknown")).removeprefix("finished:"),
        run_id=run_id,
        run_dir=run_dir,
        summary=None,
        superlink_pid=superlink.pid,
        logs_dir=federation.logs_dir,
        status_details=str(status.get("status-details", "")),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 only for a completed run)."""

    def launch() -> LocalRunResult:
        overrides, options = split_arguments(sys.argv[1:] if argv is None else argv)
        return run_local(
            overrides, out_dir=options.out_dir, timeout_seconds=options.timeout_seconds, echo=True
        )

    return launcher_main(
        "flwr_local",
        launch,
        lambda result: (
            f"fedkd flwr_local: {ended(result)} in {result.wall_seconds:.1f} s; stopped the "
            f"SuperLink (pid {result.superlink_pid}) and every process it started; logs in "
            f"{result.logs_dir}"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
