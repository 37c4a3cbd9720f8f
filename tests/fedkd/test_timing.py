"""fedkd.run.timing and summary.json's timing keys (issue 20): relations only, no durations."""

from __future__ import annotations

import json
import sys
import time

import pytest

import fedkd
from fedkd.run import timing
from fedkd.run.progress import summary_table
from fedkd.run.report_page import summary_rows
from fedkd.run.results import SUMMARY_FILE, record_outputs_seconds


@pytest.fixture
def fresh_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock as in a new process: no run started yet."""
    monkeypatch.setattr(timing, "_run_origin", None)
    monkeypatch.setattr(timing, "_runs_started", 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_process_age_covers_everything_since_fedkd_was_imported() -> None:
    before = time.perf_counter()
    age = timing.process_age_seconds()
    assert age is not None
    assert age >= before - fedkd.IMPORTED_AT - 0.05  # the process began before the import


def test_without_proc_the_clock_starts_at_the_fedkd_import(
    fresh_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timing, "process_age_seconds", lambda: None)
    assert timing.run_origin() == fedkd.IMPORTED_AT


def test_the_first_run_counts_from_the_process_start_later_ones_from_their_own(
    fresh_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timing, "process_age_seconds", lambda: 100.0)
    monkeypatch.setattr(timing, "_IMPORTED_CPU", 60.0)  # a process busy all along
    timing.start_run()
    first = timing.run_origin()
    assert timing.seconds_since_start() >= 100.0
    before_second = time.perf_counter()
    timing.start_run()
    assert first < before_second <= timing.run_origin()
    assert timing.seconds_since_start() < 100.0


def test_a_process_that_exec_d_python_late_counts_from_the_interpreter(
    fresh_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bash -c 'pip install ... && python ...'``: the process is 100 s old but had used 1 s
    of CPU when fedkd was imported; its start-up counts from the import minus that second.
    (The age is taken from the import, which may lie minutes back in a long test session.)"""
    monkeypatch.setattr(
        timing, "process_age_seconds", lambda: time.perf_counter() - timing._IMPORTED + 100.0
    )
    monkeypatch.setattr(timing, "_IMPORTED_CPU", 1.0)
    timing.start_run()
    assert timing.run_origin() == pytest.approx(timing._IMPORTED - 1.0)
    assert timing.seconds_since_start() < 100.0


def test_outputs_seconds_is_what_follows_the_rounds(tmp_path, fresh_clock: None) -> None:
    timing.start_run()
    elapsed = timing.seconds_since_start()
    summary = {"status": "completed", "startup_seconds": elapsed / 2, "rounds_seconds": 0.0}
    written = record_outputs_seconds(tmp_path, summary)
    on_disk = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert on_disk == written
    # since the rounds ended (half of what had elapsed) until now
    assert written["outputs_seconds"] >= elapsed / 2
    assert written["outputs_seconds"] <= timing.seconds_since_start() - elapsed / 2
    # read back from the file and updated again: it only grows
    again = record_outputs_seconds(tmp_path)
    assert again["outputs_seconds"] >= written["outputs_seconds"]


def test_a_summary_without_timing_is_left_as_it_is(tmp_path) -> None:
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"status": "failed"}))
    assert record_outputs_seconds(tmp_path) == {"status": "failed"}
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == {"status": "failed"}


def _summary(**changes: object) -> dict[str, object]:
    summary: dict[str, object] = {
        "status": "completed",
        "strategy": "fedavg",
        "dataset": "digits",
        "num_clients": 3,
        "num_rounds": 2,
        "rounds_completed": 2,
        "final": {"round": 2, "student_accuracy": 0.5},
        "best": {},
        "communication": {"uplink_bytes": 0, "downlink_bytes": 0},
        "parameters": 10,
        "size_bytes": 40,
        "wall_seconds": 1.5,
    }
    summary.update(changes)
    return summary


def test_the_table_shows_the_whole_command_and_its_parts() -> None:
    summary = _summary(startup_seconds=2.3, rounds_seconds=5.0, outputs_seconds=1.5)
    _, _, rows = summary_rows(summary)
    start = rows.index(["wall time (whole command)", "8.8 s", ""])
    assert rows[start + 1 : start + 4] == [
        ["  start-up", "2.3 s", ""],
        ["  rounds", "5.0 s", ""],
        ["  outputs", "1.5 s", ""],
    ]
    assert summary_table(summary).row_count == len(rows)


def test_a_summary_from_before_the_timing_keys_shows_its_wall_seconds() -> None:
    _, _, rows = summary_rows(_summary())
    assert ["wall time", "1.5 s", ""] in rows
    assert not any(row[0].strip() == "start-up" for row in rows)
