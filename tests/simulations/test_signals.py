"""SIGTERM stops ``python -m simulations.run`` like Ctrl-C, under every engine (issue 18).

Each run is signalled once its first round is in ``metrics.jsonl`` (a concrete event, not a
delay): it must exit with 128 + the signal (130 SIGINT, 143 SIGTERM), keep its finished
rounds, write ``summary.json`` with ``status: "interrupted"``, and under Ray leave no Ray
process behind and no abort (exit 134 with Ray's C++ signal dump was the bug).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fedkd.run.results import read_metrics

MARKER_VAR = "FEDKD_TEST_MARKER"  # what conftest's leftover_processes looks for
REPO = Path(__file__).resolve().parents[2]
TINY = [
    "dataset=synthetic",
    "dataset.num_samples=300",
    "num_clients=2",
    "client.epochs=1",
    "progress=false",
]
RAY = ["backend.total_cpus=2", "backend.num_cpus=2"]  # one actor: the cheapest Ray run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="scans /proc (Linux)"),
]


def _signalled_run(
    tmp_path: Path, *args: str, signum: int, run_dir: Path, timeout: float = 300
) -> tuple[int, str, str]:
    """Run the CLI, send ``signum`` once round 1 is in ``metrics.jsonl``; (exit code, output,
    marker). Whatever still carries the marker afterwards is killed, by pid."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", MARKER_VAR: marker}
    log = tmp_path / f"output-{uuid.uuid4().hex[:6]}.txt"
    metrics = run_dir / "metrics.jsonl"
    command = [sys.executable, "-m", "simulations.run", *args, f"hydra.run.dir={run_dir}"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not (
                metrics.is_file() and len(metrics.read_text().splitlines()) >= 2
            ):
                assert time.monotonic() < deadline, "round 1 never finished"
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()[-3000:]  # still running: signal it
            proc.send_signal(signum)
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, log.read_text(), marker


def _assert_interrupted(run_dir: Path, signame: str, rounds_asked: int) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert f"interrupted ({signame})" in summary["error"], summary
    rounds = [row["round"] for row in read_metrics(run_dir)]
    assert rounds == list(range(len(rounds))) and 1 <= rounds[-1] < rounds_asked
    assert summary["rounds_completed"] == rounds[-1]
    return summary


def _assert_nothing_left(left: list[int], output: str) -> None:
    assert not left, left
    assert "Aborted" not in output and "*** SIGTERM received" not in output, output[-3000:]


def test_sigterm_stops_an_inline_run_cleanly_and_it_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, "backend=inline", "num_rounds=1000", "checkpoint.every=1"]
    code, output, _ = _signalled_run(tmp_path, *args, signum=signal.SIGTERM, run_dir=run_dir)
    assert code == 143, output[-3000:]
    assert "fedkd: interrupted" in output
    summary = _assert_interrupted(run_dir, "SIGTERM", 1000)
    # an interrupted run directory resumes from its checkpoint
    more = summary["rounds_completed"] + 1
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", f"resume={run_dir}", f"num_rounds={more}",
         "progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["rounds_completed"] == more


def test_sigint_stops_an_inline_run_with_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, "backend=inline", "num_rounds=1000"]
    code, output, _ = _signalled_run(tmp_path, *args, signum=signal.SIGINT, run_dir=run_dir)
    assert code == 130, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary  # not "failed"
    _assert_interrupted(run_dir, "Ctrl-C", 1000)


@pytest.mark.ray
def test_sigterm_stops_a_run_on_fedkds_ray_pool(tmp_path: Path, leftover_processes) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, *RAY, "strategy=fedmd", "num_rounds=40"]
    code, output, marker = _signalled_run(tmp_path, *args, signum=signal.SIGTERM, run_dir=run_dir)
    assert code == 143, output[-3000:]
    _assert_interrupted(run_dir, "SIGTERM", 40)
    _assert_nothing_left(leftover_processes(marker, 15), output)


@pytest.mark.ray
def test_sigterm_stops_a_run_on_flowers_engine(tmp_path: Path, leftover_processes) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, *RAY, "strategy=fedmd", "backend.engine=flower", "num_rounds=40"]
    code, output, marker = _signalled_run(tmp_path, *args, signum=signal.SIGTERM, run_dir=run_dir)
    assert code == 143, output[-3000:]
    _assert_interrupted(run_dir, "SIGTERM", 40)
    _assert_nothing_left(leftover_processes(marker, 15), output)
