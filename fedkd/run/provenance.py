"""Where a run's results came from: fedkd's version and commit, the date and the host.

:func:`provenance` is recorded in ``summary.json`` (``provenance``) so that a result can be
traced to the code that produced it; :func:`describe` is the one line the run's report and
the comparison page show (``unknown`` for runs written before it existed).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds one ``git`` call may take before the commit is reported as unknown.
GIT_TIMEOUT_SECONDS = 5.0
#: Shown for what a run's summary does not record.
UNKNOWN = "unknown"


def provenance() -> dict[str, Any]:
    """fedkd's version and commit, the time and the host, now.

    Returns
    -------
    dict
        ``fedkd_version`` (the installed distribution's version, else ``fedkd.__version__``),
        ``commit`` (short SHA of the checkout fedkd is imported from; None outside a git
        checkout or when git is missing or slow), ``dirty`` (tracked files differ from that
        commit; None when the commit is unknown), ``date`` (ISO 8601, UTC, to the second) and
        ``host`` (the host name). Never raises.
    """
    commit, dirty = git_state(package_dir())
    return {
        "fedkd_version": fedkd_version(),
        "commit": commit,
        "dirty": dirty,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }


def package_dir() -> Path:
    """The folder fedkd is imported from."""
    import fedkd

    return Path(fedkd.__file__).resolve().parent


def fedkd_version() -> str:
    """The installed fedkd distribution's version, else the package's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedkd")
    except PackageNotFoundError:
        import fedkd

        return str(fedkd.__version__)


def git_state(directory: Path) -> tuple[str | None, bool | None]:
    """``(short commit, dirty)`` of the git checkout that tracks the package ``directory``.

    ``(None, None)`` when ``directory`` is not tracked by a git checkout (a copy without
    ``.git``, an installed wheel, or a package inside a checkout's ignored folder such as a
    virtual environment, whose commit says nothing about it), when git is missing, refuses
    the repository, or takes longer than :data:`GIT_TIMEOUT_SECONDS`. ``dirty`` is None
    when the commit is known but the working tree could not be read; untracked files do not
    count (as in ``git describe --dirty``).
    """
    commit = _git(directory, "rev-parse", "--short", "HEAD")
    if not commit or _git(directory, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None, None
    status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def _git(directory: Path, *args: str) -> str | None:
    """The stripped output of ``git -C directory args``; None when it fails in any way."""
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # no git, a timeout
        logger.debug("git %s in %s failed: %s", " ".join(args), directory, exc)
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def describe(summary: Mapping[str, Any]) -> str:
    """One line: ``fedkd 0.1.0 (commit 1a2b3c4), 2026-01-31 12:00 UTC, host h``."""
    code, date, host = (value for _, value in items(summary))
    return f"{code}, {date if date != UNKNOWN else 'date ' + UNKNOWN}, host {host}"


def items(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``[("code", "fedkd 0.1.0 (commit 1a2b3c4)"), ("date", ...), ("host", ...)]``.

    Read from ``summary["provenance"]``; what it lacks (runs written before it existed) is
    ``unknown``, except the host, which older summaries kept in ``environment``.
    """
    record = summary.get("provenance")
    record = record if isinstance(record, Mapping) else {}
    commit = record.get("commit") or UNKNOWN
    if record.get("commit") and record.get("dirty"):
        commit += ", with uncommitted changes"
    environment = summary.get("environment")
    host = record.get("host") or (
        environment.get("host") if isinstance(environment, Mapping) else None
    )
    return [
        ("code", f"fedkd {record.get('fedkd_version') or UNKNOWN} (commit {commit})"),
        ("date", format_date(record.get("date"))),
        ("host", str(host or UNKNOWN)),
    ]


def format_date(value: Any) -> str:
    """An ISO 8601 time as ``2026-01-31 12:00 UTC``; ``unknown`` when missing or unreadable."""
    if not isinstance(value, str):
        return UNKNOWN
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return UNKNOWN
    if moment.tzinfo is None:  # written without a zone: shown as written
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
