"""No Ray or Flower process outlives ``python -m simulations.run``: after a completed run, a
run whose ServerApp raises while Ray is up, and a Hydra multirun.

Each CLI call gets a unique ``FEDKD_TEST_MARKER`` in its environment; every process it starts
(Ray's gcs_server, raylet, dashboard and monitors, workers and ClientApp actors; Flower's
simulation runtime itself runs in threads of the CLI) inherits it, so scanning
``/proc/*/environ`` for the marker finds exactly the processes a test is responsible for.

A process that reads as ``raylet`` is not always a raylet: the raylet starts each worker by
fork then exec, and in between the child still carries the raylet's command line (a scan
of the /proc tree during three Ray sessions saw six such children, each the child of a
raylet; the window widens on a loaded machine). Counting clusters therefore counts only
the raylets whose parent is not itself a raylet.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedkd.run.results import read_metrics

REPO = Path(__file__).resolve().parents[2]
MARKER_VAR = "FEDKD_TEST_MARKER"
GRACE_SECONDS = 10.0  # Ray reaps its processes asynchronously after ray.shutdown()
SMALL = [
    "strategy=fedmd",
    "dataset=synthetic",
    "dataset.num_samples=300",
    "num_clients=2",
    "num_rounds=1",
    "client.epochs=1",
    "strategy.distill_epochs=1",
    "backend.total_cpus=2",
    "backend.num_cpus=2",  # one actor: the cheapest Ray run on a 2-core machine
    "progress=false",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="scans /proc (Linux)"),
]


@dataclass(frozen=True)
class Marked:
    """One marked process: its command line and its parent's pid."""

    cmdline: str
    ppid: int

    def program(self) -> str:
        return Path(self.cmdline.partition(" ")[0]).name


@dataclass
class CliRun:
    """What one ``python -m simulations.run`` call did."""

    returncode: int
    output: str
    snapshots: list[dict[int, Marked]]  # marked processes while it ran
    left: dict[int, Marked]  # marked processes still alive after the grace period

    def seen(self, program: str) -> set[int]:
        """Pids of marked processes seen running the executable named ``program``."""
        return {pid for snap in self.snapshots for pid in _running(snap, program)}


def _running(processes: dict[int, Marked], program: str) -> list[int]:
    """Pids in ``processes`` whose executable is named ``program``, leaving out children
    forked by such a process that have not exec'd yet (they still read as their parent)."""
    return [
        pid
        for pid, proc in processes.items()
        if proc.program() == program
        and not (proc.ppid in processes and processes[proc.ppid].program() == program)
    ]


def _marked_processes(marker: str) -> dict[int, Marked]:
    """Live processes whose environment holds ``FEDKD_TEST_MARKER=<marker>``.

    Unreadable entries (other users' processes, zombies) and processes that exit during the
    scan are skipped.
    """
    needle = f"{MARKER_VAR}={marker}".encode()
    found: dict[int, Marked] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")),
            0,
        )
        text = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        found[int(entry.name)] = Marked(text, ppid)
    return found


def _survivors(marker: str, grace: float = GRACE_SECONDS) -> dict[int, Marked]:
    """Marked processes still alive after polling for up to ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while (alive := _marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique marker; whatever still carries it at teardown is killed, by pid."""
    value = uuid.uuid4().hex
    yield value
    for pid in _marked_processes(value):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _cli(
    tmp_path: Path,
    marker: str,
    *args: str,
    timeout: float = 300,
    interrupt_after_round: int | None = None,
) -> CliRun:
    """Run the CLI with the marker, watching which marked processes exist while it runs;
    with ``interrupt_after_round``, press Ctrl-C (SIGINT) once that round is in
    ``metrics.jsonl``."""
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FEDKD_CONFIG_DIR": str(REPO / "configs"),
        MARKER_VAR: marker,
    }
    command = [
        sys.executable,
        "-m",
        "simulations.run",
        *args,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"hydra.sweep.dir={tmp_path / 'multi'}",
    ]
    log = tmp_path / "output.txt"
    metrics = tmp_path / "run" / "metrics.jsonl"
    snapshots: list[dict[int, Marked]] = []
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"simulations.run still running after {timeout} s")
                snapshot = _marked_processes(marker)
                snapshot.pop(proc.pid, None)  # the CLI itself
                snapshots.append(snapshot)
                if (
                    interrupt_after_round is not None
                    and metrics.is_file()
                    and len(metrics.read_text().splitlines()) > interrupt_after_round
                ):
                    proc.send_signal(signal.SIGINT)
                    interrupt_after_round = None
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return CliRun(proc.returncode, log.read_text(), snapshots, _survivors(marker))


def _assert_ray_was_seen_and_is_gone(result: CliRun) -> None:
    # The scan must see Ray's processes while they live, or finding none afterwards is moot.
    assert result.seen("raylet") and result.seen("gcs_server"), result.snapshots[-5:]
    assert not result.left, "left behind after exit:\n" + "\n".join(
        f"{pid}: {proc.cmdline}" for pid, proc in sorted(result.left.items())
    )


@pytest.mark.ray
def test_interrupted_run_leaves_no_process(tmp_path: Path, marker: str) -> None:
    """Ctrl-C in the middle of a Ray run: the run stops, keeps its finished rounds and says
    so in summary.json (status interrupted), and Ray's processes go with it."""
    result = _cli(tmp_path, marker, *SMALL, "num_rounds=30", interrupt_after_round=1)
    assert result.returncode == 130, result.output[-3000:]
    assert "fedkd: interrupted" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert "interrupted (Ctrl-C)" in summary["error"], summary
    rounds = [r["round"] for r in read_metrics(tmp_path / "run")]
    assert 1 <= rounds[-1] < 30 and rounds == list(range(len(rounds)))
    _assert_ray_was_seen_and_is_gone(result)


@pytest.mark.ray
def test_a_multirun_of_the_prediction_sharing_methods_leaves_no_process(
    tmp_path: Path, marker: str
) -> None:
    """A Hydra multirun on Ray, one job per method (each a completed run): every job ends
    with its clients answering, all jobs on one Ray cluster (a sweep keeps it between its
    jobs), and nothing left at the end."""
    # local_only and centralized are covered in process (tests/strategies); on Ray they
    # would only add two more cluster start-ups
    methods = ["fedmd", "dsfl", "fedet", "fd"]
    result = _cli(
        tmp_path,
        marker,
        "-m",
        *[o for o in SMALL if not o.startswith("strategy")],
        f"strategy={','.join(methods)}",
        "num_clients=3",
        "num_rounds=2",
        "data.proxy_labeled=true",
        "backend.num_cpus=1",
        timeout=600,
    )
    assert result.returncode == 0, result.output[-3000:]
    for index, method in enumerate(methods):
        run_dir = tmp_path / "multi" / f"{index}-{method}-synthetic"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["strategy"] == method and summary["status"] == "completed"
        rows = read_metrics(run_dir)
        assert rows[-1]["clients_ok"] == 3 and rows[-1]["clients_failed"] == 0
    # the sweep's jobs share one Ray cluster (raylets counted without their not-yet-exec'd
    # children), never two at once, and nothing is left
    assert len(result.seen("raylet")) == 1, result.seen("raylet")
    overlapping = [s for s in result.snapshots if len(_running(s, "raylet")) > 1]
    assert not overlapping, overlapping[0]
    _assert_ray_was_seen_and_is_gone(result)


def test_a_forked_child_of_a_raylet_is_not_counted_as_a_cluster() -> None:
    """The counting the multirun test relies on: a raylet's child between fork and exec
    reads as a raylet but is not one; two raylets with other parents are two clusters."""
    driver = Marked("python -m simulations.run", 1)
    raylet = Marked("/venv/ray/core/src/ray/raylet/raylet --node-ip-address=127.0.0.1", 10)
    snapshot = {
        10: driver,
        11: raylet,
        12: Marked(raylet.cmdline, 11),  # forked by the raylet, not exec'd yet
        13: Marked("python default_worker.py", 11),
    }
    assert _running(snapshot, "raylet") == [11]
    assert _running({**snapshot, 20: raylet}, "raylet") == [11, 20]
