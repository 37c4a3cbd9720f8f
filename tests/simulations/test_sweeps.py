"""Sweeps (``simulations.run -m``): the jobs of a Ray sweep share one Ray and actor pool and
give the numbers of separate runs; ``hydra/launcher=fedkd_parallel`` runs in-process jobs
side by side with a sequential sweep's results, and stops them cleanly on Ctrl-C."""

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
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import OmegaConf

from fedkd.config import compose_config
from fedkd.run.results import read_metrics
from hydra_plugins.fedkd_parallel_launcher.parallel_launcher import default_workers, uses_ray
from simulations.run import run

MARKER_VAR = "FEDKD_TEST_MARKER"  # what conftest's leftover_processes looks for
REPO = Path(__file__).resolve().parents[2]
RAY = ["backend=ray_cpu", "backend.total_cpus=2", "backend.num_cpus=1"]  # two actors
# FedMD: clients keep their models in the node state, so a job's round 2 depends on what its
# clients' models became in round 1, on whichever (kept) actor ran them.
SMALL = [
    "strategy=fedmd",
    "dataset=synthetic",
    "dataset.num_samples=300",
    "num_clients=4",
    "num_rounds=2",
    "client.epochs=1",
    "strategy.digest_epochs=1",
    "strategy.distill_epochs=2",
    "progress=false",
    "report.html=false",
    "report.export=false",
]
# Runs the command line with ray.init counted and each grid's actors noted; writes both to
# the file named by the first argument when the process exits.
PROBE = """
import atexit, json, sys
import ray
import simulations.pool as pool
inits, grids = [], []
real_init = ray.init
def counting_init(*args, **kwargs):
    inits.append(1)
    return real_init(*args, **kwargs)
ray.init = counting_init
class RecordingGrid(pool.RayGrid):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        grids.append([actor._actor_id.hex() for actor in self.actors])
pool.RayGrid = RecordingGrid
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps({"inits": len(inits), "grids": grids})))
from simulations.run import main
sys.argv = ["simulations.run", *sys.argv[2:]]
main()
"""


def _rows(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k != "seconds" and not k.endswith("_seconds")}
        for row in read_metrics(run_dir)
    ]


def _separate_inline_run(overrides: list[str], run_dir: Path) -> list[dict]:
    """One run on its own, in this process (the inline engine gives Ray's numbers:
    test_determinism); its metrics rows without timings."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    try:
        summary = run(compose_config([*SMALL, *overrides, "backend=inline"]), run_dir)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    assert summary["status"] == "completed"
    return _rows(run_dir)


def _interrupted_sweep(
    args: list[str], sweep: Path, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a sweep; send SIGINT once a job has a round in its ``metrics.jsonl``; (exit
    code, output)."""
    command = [sys.executable, "-m", "simulations.run", "-m", *SMALL, *args]
    log = sweep.parent / f"output-{uuid.uuid4().hex[:6]}.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **(env or {})},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and not any(
                len(p.read_text().splitlines()) >= 2 for p in sweep.glob("*/metrics.jsonl")
            ):
                assert time.monotonic() < deadline, "no job finished a round"
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()[-3000:]
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, log.read_text()


def _sweep(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations.run", "-m", *SMALL, *args],
        cwd=REPO,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="scans /proc (Linux)")
def test_a_ray_sweep_shares_one_ray_and_pool_and_gives_separate_runs_numbers(
    tmp_path: Path, leftover_processes
) -> None:
    probe = tmp_path / "probe.json"
    sweep = tmp_path / "sweep"
    marker = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(probe), "-m", *SMALL, *RAY, "seed=0,1",
         f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", MARKER_VAR: marker},
        capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    left = leftover_processes(marker, 30)
    assert not left, left  # Ray and the actors went down at the sweep's end
    seen = json.loads(probe.read_text())
    assert seen["inits"] == 1  # one Ray for both jobs
    assert len(seen["grids"]) == 2 and len(seen["grids"][0]) == 2
    assert seen["grids"][1] == seen["grids"][0]  # the second job ran on the first's actors
    for job, seed in enumerate((0, 1)):
        alone = _separate_inline_run([f"seed={seed}"], tmp_path / f"alone-{seed}")
        assert _rows(sweep / f"{job}-fedmd-synthetic") == alone


@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="scans /proc (Linux)")
def test_ctrl_c_stops_a_ray_sweep_and_its_kept_pool(tmp_path: Path, leftover_processes) -> None:
    """SIGINT in the first job of a Ray sweep: that job stops cleanly, the second never
    starts, the command exits 130 and no Ray process is left."""
    sweep = tmp_path / "sweep"
    marker = uuid.uuid4().hex
    code, output = _interrupted_sweep(
        [*RAY, "num_rounds=1000", "seed=0,1", f"hydra.sweep.dir={sweep}"],
        sweep,
        env={MARKER_VAR: marker},
    )
    assert code == 130, output[-3000:]
    left = leftover_processes(marker, 30)
    assert not left, left
    summary = json.loads((sweep / "0-fedmd-synthetic" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] < 1000
    assert not (sweep / "1-fedmd-synthetic").exists()
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow
def test_the_parallel_launcher_gives_the_sequential_sweeps_results(tmp_path: Path) -> None:
    seeds = "seed=0,1,2"
    parallel = _sweep(
        "backend=inline", seeds, "hydra/launcher=fedkd_parallel", "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'parallel'}",
    )  # fmt: skip
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert "Launching 3 jobs on 2 worker processes" in parallel.stderr
    # the sweep ends with the command that compares its runs, on stdout (the results)
    compare = f"python -m simulations.report {tmp_path / 'parallel'} --html"
    assert compare in parallel.stdout.replace("\n", " "), parallel.stdout[-2000:]
    sequential = _sweep("backend=inline", seeds, f"hydra.sweep.dir={tmp_path / 'sequential'}")
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    for job in range(3):
        name = f"{job}-fedmd-synthetic"
        assert _rows(tmp_path / "parallel" / name) == _rows(tmp_path / "sequential" / name)
        summary = json.loads((tmp_path / "parallel" / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == job
        overrides = (tmp_path / "parallel" / name / ".hydra" / "overrides.yaml").read_text()
        assert f"seed={job}" in overrides


@pytest.mark.slow
def test_ctrl_c_stops_a_parallel_sweep_cleanly(tmp_path: Path) -> None:
    """SIGINT once the first job has a round: the running jobs stop cleanly (status
    ``interrupted``, finished rounds kept), no other job starts, the command exits 130."""
    sweep = tmp_path / "sweep"
    code, output = _interrupted_sweep(
        ["backend=inline", "num_rounds=1000", "seed=0,1,2,3,4,5",
         "hydra/launcher=fedkd_parallel", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"],
        sweep,
    )  # fmt: skip
    assert code == 130, output[-3000:]
    started = sorted(p.parent.name for p in sweep.glob("*/summary.json"))
    assert 1 <= len(started) <= 2  # the jobs running then (two workers), not all six
    for name in started:
        summary = json.loads((sweep / name / "summary.json").read_text())
        assert summary["status"] == "interrupted", summary
        assert summary["rounds_completed"] < 1000
    assert "Traceback" not in output, output[-3000:]


def test_the_parallel_launcher_sizes_its_workers_by_cores_and_torch_threads() -> None:
    inline = [OmegaConf.create({"backend": {"name": "inline", "torch_threads": 1}})] * 5
    assert default_workers(inline, cores=4) == 4
    assert default_workers(inline[:2], cores=4) == 2  # never more workers than jobs
    wide = [*inline, OmegaConf.create({"backend": {"name": "inline", "torch_threads": 2}})]
    assert default_workers(wide, cores=4) == 2
    everything = [OmegaConf.create({"backend": {"name": "inline", "torch_threads": 0}})]
    assert default_workers(everything * 3, cores=4) == 1  # 0: torch takes every core
    batched = OmegaConf.create({"backend": {"name": "batched", "compute_threads": 0}})
    assert default_workers([*inline, batched], cores=4) == 1
    assert default_workers(inline, cores=1) == 1
    assert not uses_ray(inline[0])
    assert uses_ray(OmegaConf.create({"backend": {"name": "ray_cpu"}}))
    assert not uses_ray(OmegaConf.create({}))
