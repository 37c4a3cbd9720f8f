"""The terminal (issue 21, item 1): log lines above the live progress line, never glued to
it; phases on the live line; third-party noise silenced; results on stdout."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rich.console import Console

import fedkd.run.console as console_module
from fedkd.run.console import ConsoleLogHandler, active_display, phase, quiet_third_party_warnings
from fedkd.run.progress import RoundProgress

REPO = Path(__file__).resolve().parents[2]
CONTROL = re.compile(r"(\x1b\[[0-9;?]*[A-Za-z]|\r)")


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """fedkd's console replaced by a 100-column terminal writing into a buffer."""
    buffer = io.StringIO()
    fake = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(console_module, "_console", fake)
    return buffer


def _lines(buffer: io.StringIO) -> list[str]:
    """What each line written would show on a terminal: a carriage return or an erase-line
    sequence starts the line over (enough of a terminal for rich's live display)."""
    shown = []
    for raw in buffer.getvalue().split("\n"):
        line: list[str] = []
        column = 0
        for part in CONTROL.split(raw):
            if part in ("\r", "\x1b[2K"):
                line, column = ([] if part == "\x1b[2K" else line), 0
            elif not CONTROL.fullmatch(part or "x"):
                line[column : column + len(part)] = list(part)
                column += len(part)
        shown.append("".join(line))
    return shown


def test_log_lines_print_above_the_live_line_never_on_it(terminal) -> None:
    log = logging.getLogger("fedkd.test_console")
    handler = ConsoleLogHandler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        with RoundProgress(3) as progress:
            progress.update({"round": 1, "student_accuracy": 0.5})
            log.info("checkpoint of round one")
            progress.update({"round": 2, "student_accuracy": 0.6})
            log.warning("a warning in round two")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    lines = _lines(terminal)
    logged = [line for line in lines if "checkpoint of round one" in line or "round two" in line]
    assert len(logged) == 2, lines
    for line in logged:  # a log line holds the log only: time, level, message
        assert "fedkd round" not in line and "global" not in line, line
        assert re.search(r"(INFO|WARNING)\s+(checkpoint|a warning)", line), line
    assert any("fedkd round" in line and "2/3" in line for line in lines)


def test_phases_show_on_the_live_line_while_it_is_shown(terminal) -> None:
    assert active_display() is None
    with RoundProgress(2) as progress:
        assert active_display() is progress
        phase("building the data")
        progress._progress.refresh()
        with progress:  # the server enters the display simulations.run started: same one
            phase("round 1: clients training")
            progress._progress.refresh()
        assert active_display() is progress  # the inner exit does not stop it
    assert active_display() is None
    phase("after the run")  # no display: nothing breaks, nothing shown
    text = CONTROL.sub("", terminal.getvalue())  # every frame drawn
    assert "building the data" in text and "round 1: clients training" in text
    assert "after the run" not in text


def test_the_progress_line_names_the_global_model_not_the_student(terminal) -> None:
    with RoundProgress(1) as progress:
        progress.update({"round": 1, "student_accuracy": 0.5, "ensemble_accuracy": 0.25})
    text = "\n".join(_lines(terminal))
    assert "global 50.0%" in text and "ensemble 25.0%" in text and "student" not in text


def test_third_party_noise_is_silenced_and_other_warnings_become_log_lines(caplog) -> None:
    with warnings.catch_warnings():
        quiet_third_party_warnings()
        try:
            with caplog.at_level(logging.WARNING, logger="py.warnings"):
                warnings.warn("`torch.jit.trace` is deprecated", DeprecationWarning, stacklevel=1)
                warnings.warn(
                    "Tip: In future versions of Ray, Ray will no longer override",
                    FutureWarning,
                    stacklevel=1,
                )
                warnings.warn("something a user must see", UserWarning, stacklevel=1)
        finally:
            logging.captureWarnings(False)
    messages = [record.getMessage() for record in caplog.records]
    assert any("something a user must see" in m for m in messages), messages
    assert not any("torch.jit" in m or "future versions of Ray" in m for m in messages)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations.run", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**_env(), "PYTHONPATH": str(REPO), "FEDKD_CONFIG_DIR": str(REPO / "configs")},
    )  # fmt: skip


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"FLWR_TELEMETRY_ENABLED": "0"}


@pytest.mark.slow
def test_results_go_to_stdout_and_diagnostics_to_stderr(tmp_path: Path) -> None:
    """``python -m simulations.run > out.txt`` keeps the table; the logs stay on stderr."""
    run_dir = tmp_path / "run"
    proc = _cli(
        "backend=inline", "num_rounds=1", "report.export=false", f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global model, global test set" in proc.stdout and f"results in {run_dir}" in proc.stdout
    assert "INFO" not in proc.stdout and "data: digits" not in proc.stdout
    assert "data: digits" in proc.stderr and "global model, global test set" not in proc.stderr
    assert "validation objective" not in proc.stdout + proc.stderr  # an unexplained line
    # not a terminal: wide enough that no table label folds
    assert "clients' own models, own test splits (mean)" in proc.stdout
    log = (run_dir / "run.log").read_text()
    assert "[fedkd.data.federated][INFO] - data: digits" in log  # run.log keeps the logger


@pytest.mark.slow
def test_help_says_what_fedkd_is_first(tmp_path: Path) -> None:
    proc = _cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("fedkd: federated distillation on Flower")
    assert "strategy=" in proc.stdout and "powered by Hydra" not in proc.stdout
