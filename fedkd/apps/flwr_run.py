"""What the ServerApp does only under ``flwr run``: its default run directory, its log file,
quiet third-party warnings, and the pid of the local SuperLink Flower leaves running.

``flwr run .`` on the ``local`` connection starts a detached ``flower-superlink
--simulation`` (``flwr/cli/local_superlink.py``) and leaves it running after the run, for
the next one; its ``flower-superexec`` starts one ``flwr-simulation`` per run, whose
ServerApp thread calls :func:`fedkd.apps.server.main`. ``simulations.flwr_local`` runs the
same app on a SuperLink it owns and stops (docs/DEPLOYMENT.md, "flwr run").
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

#: Set by fedkd's launchers (``simulations.flwr_local``, ``simulations.deploy_local``) on
#: the SuperLink they start, so on the ServerApp's process too: the launcher prints the
#: results table once it has stopped every process, and stops the SuperLink itself, so the
#: ServerApp does neither print the table nor tell the user to stop it.
LAUNCHER_VAR = "FEDKD_LAUNCHER"
RUN_LOG_FILE = "run.log"

#: Warnings of the ``flwr-simulation`` process that say nothing a user can act on, on top
#: of :data:`fedkd.run.console.NOISE` (Ray's accelerator notice, ``torch.jit``): Flower turns
#: every DeprecationWarning on there (``flwr.simulation.ray_transport.utils`` sets
#: "once"), so the export's legacy ONNX path warns as well. (message, category, module)
#: regular expressions, matched at the start.
FLWR_RUN_NOISE = (
    (r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning,
     r"fedkd\.run\.export"),
    (r"The feature will be removed", DeprecationWarning, r"torch\.onnx\."),
)  # fmt: skip


def default_run_dir(
    cfg: Mapping[str, Any], *, suffix: str = "", now: datetime | None = None
) -> Path:
    """``outputs/<YYYY-MM-DD>/<HH-MM-SS>-<strategy>-<dataset><suffix>``: the run directory
    of ``python -m simulations.run`` (``hydra.run.dir`` in ``configs/config.yaml``), for
    runs started through ``flwr run`` (relative to the working directory)."""
    now = now or datetime.now()
    name = f"{now:%H-%M-%S}-{cfg['strategy']['name']}-{cfg['dataset']['name']}{suffix}"
    return Path("outputs") / f"{now:%Y-%m-%d}" / name


def quiet_flwr_run_warnings() -> None:
    """Silence :data:`fedkd.run.console.NOISE` and :data:`FLWR_RUN_NOISE` in this process."""
    from fedkd.run.console import quiet_third_party_warnings

    quiet_third_party_warnings()
    for message, category, module in FLWR_RUN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class _FlowerStyle(logging.Formatter):
    """``LEVEL :    message``, as Flower's own lines in the same ``flwr run`` stream."""

    def format(self, record: logging.LogRecord) -> str:
        padding = " " * max(0, 8 - len(record.levelname))
        return f"{record.levelname} : {padding} {super().format(record)}"


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """fedkd's log lines (INFO and up) into ``<run_dir>/run.log`` with date and logger, as
    a normal run's (``configs/hydra/job_logging/fedkd.yaml``), and onto stderr, which
    Flower streams to ``flwr run --stream``; undone on exit."""
    run_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(run_dir / RUN_LOG_FILE)
    file_handler.setFormatter(
        logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    )
    stream_handler = logging.StreamHandler(sys.stderr)
    stream_handler.setFormatter(_FlowerStyle("%(message)s"))
    loggers = [logging.getLogger(name) for name in ("fedkd", "strategies")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.INFO)
        each.addHandler(file_handler)
        each.addHandler(stream_handler)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.removeHandler(file_handler)
            each.removeHandler(stream_handler)
            each.setLevel(level)
        file_handler.close()


def launcher() -> str | None:
    """The fedkd launcher this ServerApp runs under (:data:`LAUNCHER_VAR`), if any."""
    return os.environ.get(LAUNCHER_VAR) or None


def simulation_superlink() -> int | None:
    """The pid of the ``flower-superlink --simulation`` this process runs under (through
    its ``flower-superexec``), or None: not under one, or not Linux ``/proc``."""
    pid = os.getppid()
    while pid > 1:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if b"--simulation" in args and any(
            Path(arg.decode(errors="replace")).name == "flower-superlink" for arg in args[:2]
        ):
            return pid
        pid = parent
    return None


def superlink_hint() -> str | None:
    """What to tell a user whose ``flwr run`` started a local simulation SuperLink: Flower
    keeps it running after the run, for the next ``flwr run``, and prints nothing about it.
    None when the ServerApp does not run under such a SuperLink, or under one that
    ``simulations.flwr_local`` started (it stops its own)."""
    if launcher() is not None:
        return None
    pid = simulation_superlink()
    if pid is None:
        return None
    return (
        f"Flower's local SuperLink (pid {pid}) keeps running after `flwr run` ends, for the "
        f"next run; `kill {pid}` stops it and the processes it started "
        "(`python -m simulations.flwr_local` runs the same app and stops it by itself)"
    )
