"""``flwr run .`` runs the same ServerApp/ClientApp as a local Flower simulation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkd.run.results import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _pids_with_argument(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a path unique to this test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and "flower-superlink" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.ray
@pytest.mark.skipif(
    shutil.which("flwr", path=str(Path(sys.executable).parent)) is None,
    reason="flwr CLI not installed beside this interpreter",
)
def test_flwr_run_local_simulation(tmp_path, in_process_run):
    flwr_home = tmp_path / "flwr-home"
    out_dir = tmp_path / "run"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # flwr starts its tools by name
    }
    overrides = (
        "dataset=synthetic dataset.num_samples=300 num_clients=3 num_rounds=2 client.epochs=1"
    )
    try:
        proc = subprocess.run(
            [
                str(Path(bin_dir) / "flwr"),
                "run",
                ".",
                "--federation-config",
                "num-supernodes=3",
                "--run-config",
                f'overrides="{overrides}" out-dir="{out_dir}"',
                "--stream",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        # `flwr run` leaves a detached local SuperLink behind: stop the one this test started.
        for pid in _pids_with_argument(str(flwr_home)):
            os.kill(pid, signal.SIGTERM)
        time.sleep(1)
    # `flwr run --stream` exits 0 even when the ServerApp failed: check the results instead.
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary_path = out_dir / "summary.json"
    assert summary_path.exists(), (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    in_process_run(overrides.split(), tmp_path / "inproc")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(out_dir)) == strip(read_metrics(tmp_path / "inproc"))
