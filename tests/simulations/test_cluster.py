"""Beyond one machine: a simulation that joins a running Ray cluster (``backend.address``) and a
Hydra sweep whose jobs run as tasks on that cluster (``hydra/launcher=fedkd_ray``), against a
head node started with ``ray start`` on 127.0.0.1 and stopped by its process ids."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MARKER = "FEDKD_TEST_CLUSTER"


def _marked(value: str) -> list[int]:
    """Pids of live processes whose environment has ``MARKER=value``."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A one-node Ray cluster (2 CPUs) on 127.0.0.1; its address. Every process it started
    carries a marker variable and is killed by pid afterwards."""
    ray_cli = Path(sys.executable).parent / "ray"
    temp_dir = tempfile.mkdtemp(prefix="fkr", dir="/tmp")  # short: Ray's socket paths
    port = _free_port()
    env = {**os.environ, MARKER: temp_dir, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [
        str(ray_cli),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--ray-client-server-port={_free_port()}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ray runtime started" in line:
                break
            if time.monotonic() > deadline:
                pytest.fail("ray start did not come up in 120 s")
        else:
            pytest.fail(f"ray start exited with {proc.wait()}")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        deadline = time.monotonic() + 30
        while (left := _marked(temp_dir)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        assert not _marked(temp_dir), "the Ray head left processes"


@pytest.fixture
def small(two_round_overrides) -> list[str]:
    return two_round_overrides("strategy=fedavg", "progress=false")


@pytest.mark.ray
def test_a_simulation_joins_a_running_cluster_and_matches_the_inline_engine(
    head: str, tmp_path: Path, small, simulation_cli
) -> None:
    on_cluster = simulation_cli(
        *small, f"backend.address={head}", f"hydra.run.dir={tmp_path / 'c'}"
    )
    assert on_cluster.returncode == 0, on_cluster.stderr[-3000:]
    inline = simulation_cli(*small, "backend=inline", f"hydra.run.dir={tmp_path / 'i'}")
    assert inline.returncode == 0, inline.stderr[-3000:]
    rows = [_rows(tmp_path / name) for name in ("c", "i")]
    assert rows[0] == rows[1]
    assert rows[0][-1]["clients_ok"] == 4


@pytest.mark.ray
def test_a_sweep_runs_its_jobs_as_tasks_on_the_cluster(head: str, tmp_path: Path, small) -> None:
    """Two jobs (seeds 0 and 1), each a Ray task that runs its clients as an actor on the same
    cluster. Both complete, in processes other than the command's."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulations.run",
            "-m",
            *small,
            "hydra/launcher=fedkd_ray",
            f"hydra.launcher.address={head}",
            "hydra.launcher.cpus_per_job=0.5",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "seed=0,1",
            "backend.max_actors=1",
        ],
        cwd=tmp_path,  # not the repository: the jobs import fedkd from the installed package
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-3000:]
    assert f"Launching 2 jobs on {head}" in output
    sweep = tmp_path / "sweep"
    summaries = [
        json.loads((sweep / f"{i}-fedavg-synthetic" / "summary.json").read_text()) for i in (0, 1)
    ]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["seed"] for s in summaries] == [0, 1]
    assert all(s["environment"]["pid"] != proc.pid for s in summaries)
    assert all(0 < s["final"]["student_accuracy"] <= 1 for s in summaries)


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in row.items() if k != "seconds" and not k.endswith("_seconds")}
        for row in rows
    ]
