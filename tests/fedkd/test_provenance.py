"""fedkd's version and commit, the date and the host of a run (``summary.json``'s
``provenance``), and the line the reports show."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

import fedkd
from fedkd.run import provenance
from fedkd.run.provenance import describe, format_date, git_state, items

REPO = Path(fedkd.__file__).resolve().parent.parent
HAS_GIT = shutil.which("git") is not None


def _git(directory: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(directory),
         *args],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


def _package(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text('"""a package"""\n')
    return folder


def test_provenance_has_every_key_and_a_utc_date(monkeypatch) -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    record = provenance.provenance()
    after = dt.datetime.now(dt.timezone.utc)
    assert set(record) == {"fedkd_version", "commit", "dirty", "date", "host"}
    assert record["fedkd_version"] in (fedkd.__version__, _installed_version())
    assert record["host"] == socket.gethostname()
    date = dt.datetime.fromisoformat(record["date"])
    assert date.utcoffset() == dt.timedelta(0) and before <= date <= after


def _installed_version() -> str:
    from importlib.metadata import version

    return version("fedkd")


@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_commit_of_this_checkout() -> None:
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True).returncode:
        pytest.skip("fedkd is not imported from a git checkout")
    record = provenance.provenance()
    assert record["commit"] == _git(REPO, "rev-parse", "--short", "HEAD")
    assert isinstance(record["dirty"], bool)


def test_a_copy_without_git_has_no_commit(tmp_path, monkeypatch) -> None:
    copy = tmp_path / "fedkd"
    shutil.copytree(REPO / "fedkd", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert git_state(copy) == (None, None)
    monkeypatch.setattr(provenance, "package_dir", lambda: copy)
    record = provenance.provenance()
    assert record["commit"] is None and record["dirty"] is None
    assert record["fedkd_version"]  # still known without git


@pytest.mark.slow  # git subprocesses
@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_commit_and_dirty_of_a_git_checkout(tmp_path) -> None:
    repo = tmp_path / "repo"
    package = _package(repo / "pkg")
    _git(repo, "init", "-q")
    _git(repo, "add", "pkg/__init__.py")
    _git(repo, "commit", "-q", "-m", "first")
    assert git_state(package) == (_git(repo, "rev-parse", "--short", "HEAD"), False)
    (repo / "untracked.txt").write_text("not part of the commit")
    assert git_state(package)[1] is False  # untracked files do not count
    (package / "__init__.py").write_text('"""changed"""\n')
    assert git_state(package)[1] is True


@pytest.mark.slow  # git subprocesses
@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_a_package_in_an_ignored_folder_of_a_checkout_has_no_commit(tmp_path) -> None:
    """An installed fedkd inside a virtual environment inside some checkout: that checkout's
    commit says nothing about the package."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".gitignore").write_text(".venv/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".gitignore")
    _git(repo, "commit", "-q", "-m", "first")
    installed = _package(repo / ".venv" / "site-packages" / "fedkd")
    assert git_state(installed) == (None, None)


@pytest.mark.parametrize(
    "failure",
    [FileNotFoundError("git"), subprocess.TimeoutExpired("git", 5.0), PermissionError("x")],
)
def test_git_failing_or_hanging_gives_no_commit(tmp_path, monkeypatch, failure) -> None:
    def run(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(subprocess, "run", run)
    assert git_state(tmp_path) == (None, None)
    assert provenance.provenance()["commit"] is None


def test_version_falls_back_to_the_package(monkeypatch) -> None:
    from importlib import metadata

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert provenance.fedkd_version() == fedkd.__version__


def test_describe_and_items() -> None:
    summary = {
        "provenance": {
            "fedkd_version": "1.2.3",
            "commit": "abc1234",
            "dirty": True,
            "date": "2026-01-31T13:30:59+01:00",
            "host": "lab-1",
        }
    }
    assert items(summary) == [
        ("code", "fedkd 1.2.3 (commit abc1234, with uncommitted changes)"),
        ("date", "2026-01-31 12:30 UTC"),
        ("host", "lab-1"),
    ]
    assert describe(summary) == (
        "fedkd 1.2.3 (commit abc1234, with uncommitted changes), 2026-01-31 12:30 UTC, host lab-1"
    )
    # a run written before provenance existed: unknown, but the host from environment
    assert describe({"environment": {"host": "old"}}) == (
        "fedkd unknown (commit unknown), date unknown, host old"
    )
    outside = {"provenance": {"fedkd_version": "1.2.3", "commit": None, "dirty": None}}
    assert items(outside)[0] == ("code", "fedkd 1.2.3 (commit unknown)")


def test_format_date() -> None:
    assert format_date("2026-01-31T12:00:00+00:00") == "2026-01-31 12:00 UTC"
    assert format_date("2026-01-31T12:00:00") == "2026-01-31 12:00"  # no zone: as written
    assert format_date("yesterday") == "unknown"
    assert format_date(None) == "unknown"
