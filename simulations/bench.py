"""``python -m simulations.bench``: fedkd's simulation against a plain PyTorch loop doing the
same work, for N clients, in one invocation.

Workload (stated, and printed with the results): FedAvg of the default MLP on the
``synthetic`` dataset (20 features, 4 classes, IID partitions), every client sampled every
round. A client's round, in both paths, is what fedkd's ClientApp does for FedAvg: load the
global weights, ``client.epochs`` epochs of SGD over its ``--samples-per-client`` training
records, accuracy on its local test split, and its predictions on the server test set of
2000 rows (the evaluation-only diagnostics every fedkd round computes). The server
averages the weights by example count and evaluates the model on the test set and on the
pooled local test splits.
The defaults (1000 records, 5 epochs) cost about 0.1 s per client round on one core of the
machine the docs were measured on; ``--tiny`` is a workload where Flower's fixed costs
dominate (20 records, 1 epoch).

Both paths run the same seeded computation, so their final accuracies are equal (reported
as ``same_result``): the plain loop is the simulation without Flower, Ray and messages. The
plain loop runs on one torch thread in this process, before and after the simulation (a
shared machine's speed drifts; the two loops bracket it); the simulation runs in a child
process (``python -m simulations.run``) with Ray actors of one thread each, one per core
(``--set backend.max_actors=1`` for one), or in process with ``--backend inline``.

Reported per N: ``sim_seconds_per_round`` and ``plain_seconds_per_round`` (median over the
rounds after the first; for the plain loop, over both loops' rounds), ``ratio`` (sim /
plain: 1/actors is the physical limit), ``overhead_ms_per_message`` (actor time per
training message beyond the plain loop's, ``(sim - plain / actors) * actors / N``),
``startup_seconds`` (the simulation's wall time not spent in rounds: imports, data, Ray
start and shutdown), ``peak_rss_bytes`` (the simulation's whole process tree),
``uplink_bytes_per_round``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
#: The server test set, fixed in size so that each client's evaluation-only predictions on
#: it (part of every fedkd round) cost the same at every N.
TEST_ROWS = 2000
#: Shares of the synthetic dataset that are not client training data, besides the test set:
#: the public proxy (FedAvg does not use it) and each partition's local test split (0.2).
_PROXY_FRACTION = 0.02
_TRAIN_SHARE = (1 - _PROXY_FRACTION) * 0.8


@dataclass
class Workload:
    """What one benchmark point runs."""

    clients: int
    rounds: int
    samples_per_client: int
    epochs: int
    seed: int = 0

    def overrides(self) -> list[str]:
        """Hydra overrides of the run (the simulation and the plain loop read the same)."""
        pool = round(self.samples_per_client * self.clients / _TRAIN_SHARE)
        num_samples = pool + TEST_ROWS
        return [
            "strategy=fedavg",
            "dataset=synthetic",
            f"dataset.num_samples={num_samples}",
            f"data.test_fraction={TEST_ROWS / num_samples}",
            f"data.proxy_fraction={_PROXY_FRACTION}",
            "partition=iid",
            f"num_clients={self.clients}",
            f"num_rounds={self.rounds}",
            f"client.epochs={self.epochs}",
            f"seed={self.seed}",
            "checkpoint.every=0",
            "progress=false",
        ]


@dataclass
class Point:
    """One line of the results (the JSON file's ``results`` entries)."""

    clients: int
    sim_seconds_per_round: float
    plain_seconds_per_round: float
    ratio: float
    overhead_ms_per_message: float
    startup_seconds: float
    peak_rss_bytes: int
    uplink_bytes_per_round: int
    downlink_bytes_per_round: int
    actors: int
    sim_accuracy: float | None
    plain_accuracy: float | None
    plain_before_seconds_per_round: float
    plain_after_seconds_per_round: float
    same_result: bool


# ---------------------------------------------------------------------- the plain loop
def plain_loop(overrides: Sequence[str]) -> tuple[list[float], float]:
    """The simulation's computation without Flower: per-round seconds and final accuracy."""
    from fedkd.apps.server import prepare_run, validation_set
    from fedkd.config import compose_config
    from fedkd.train import evaluate, predict_probs, train_local
    from strategies.base import round_seed, student_arrays, weighted_average

    torch.set_num_threads(1)  # what each simulated client gets
    plan = prepare_run(compose_config(list(overrides)))
    setup, data = plan.assets.setup, plan.assets.data
    device = plan.assets.device
    student = plan.assets.student
    model = plan.strategy.architecture_model(0)  # a separate object, as a client's
    valid_x, valid_y = validation_set(data)
    clients = [data.client_data(p) for p in range(setup.num_clients)]
    seconds: list[float] = []
    accuracy = 0.0
    for server_round in range(1, plan.options.num_rounds + 1):
        started = time.perf_counter()
        start_state = {k: v.clone() for k, v in student.state_dict().items()}
        states, sizes = [], []
        for partition_id, client in enumerate(clients):
            model.load_state_dict(start_state, strict=True)
            train_local(
                model,
                client.train_x,
                client.train_y,
                settings=setup.local,
                seed=round_seed(setup.seed, server_round, 0, partition_id),
                device=device,
            )
            if len(client.test_y):
                evaluate(model, client.test_x, client.test_y, device=device)
            predict_probs(model, data.test_x, device=device)
            states.append({k: v.numpy() for k, v in student_arrays(model).items()})
            sizes.append(float(len(client.train_y)))
        averaged = weighted_average(states, sizes)
        student.load_state_dict({k: torch.from_numpy(v) for k, v in averaged.items()})
        _, accuracy = evaluate(student, data.test_x, data.test_y, device=device)
        evaluate(student, valid_x, valid_y, device=device)
        seconds.append(time.perf_counter() - started)
    return seconds, accuracy


# ---------------------------------------------------------------------- the simulation
class TreeMemory:
    """Peak resident memory of a process and all its descendants (Linux ``/proc``)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self.seen: set[int] = set()  # every pid of the tree, to wait for them at the end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid, seen=self.seen))
            self._stop.wait(self.interval)

    def wait_for_exit(self, timeout: float = 30.0) -> None:
        """Wait until every process seen in the tree is gone (Ray's daemons outlive the
        driver by a few seconds; they would steal cores from the next measurement)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in self.seen):
            time.sleep(0.2)


def tree_rss(root: int, *, seen: set[int] | None = None) -> int:
    """Resident bytes of ``root`` and its descendants now (0 where /proc is unreadable);
    their pids are added to ``seen``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        if seen is not None:
            seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def simulate(
    overrides: Sequence[str], run_dir: Path, *, extra: Sequence[str] = ()
) -> tuple[float, int, list[dict[str, Any]], dict[str, Any]]:
    """Run ``python -m simulations.run`` in a child process: wall seconds, peak tree RSS,
    the ``metrics.jsonl`` rows and ``summary.json``."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    command = [
        sys.executable,
        "-m",
        "simulations.run",
        *overrides,
        *extra,
        f"hydra.run.dir={run_dir}",
    ]
    started = time.perf_counter()
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        with TreeMemory(proc.pid) as memory:
            returncode = proc.wait()
    wall = time.perf_counter() - started
    memory.wait_for_exit()
    if returncode != 0:
        raise RuntimeError(f"the simulation failed (exit {returncode}); see {run_dir}.log")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return wall, memory.peak, rows, summary


def _steady(values: Sequence[float]) -> float:
    """Median over the rounds after the first (the first pays for warm-up)."""
    return float(statistics.median(values[1:] if len(values) > 1 else values))


def actor_count(extra: Sequence[str], clients: int) -> int:
    """Actors the simulation runs clients on: one per core (at most one per client), one
    for ``backend=inline``, or ``backend.max_actors``."""
    if "backend=inline" in extra:
        return 1
    count = min(os.cpu_count() or 1, clients)
    for override in extra:
        if override.startswith("backend.max_actors="):
            count = min(count, int(override.split("=", 1)[1]))
    return max(1, count)


def measure(workload: Workload, work_dir: Path, *, backend: Sequence[str] = ()) -> Point:
    """One benchmark point on one workload: the plain loop, the simulation, the plain loop
    again. The plain figure is the median over both loops' steady rounds, so a machine that
    slows down or speeds up during the point (shared hosts do) moves both sides alike."""
    overrides = workload.overrides()
    before, plain_accuracy = plain_loop(overrides)
    wall, peak, rows, summary = simulate(
        overrides, work_dir / f"sim-{workload.clients}", extra=backend
    )
    after, _ = plain_loop(overrides)
    plain_round = float(statistics.median([*before[1:], *after[1:]]))
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    sim_round = _steady([r["seconds"] for r in rounds])
    actors = actor_count(backend, workload.clients)
    sim_accuracy = summary["final"].get("student_accuracy")
    return Point(
        clients=workload.clients,
        sim_seconds_per_round=sim_round,
        plain_seconds_per_round=plain_round,
        ratio=sim_round / plain_round,
        overhead_ms_per_message=(sim_round - plain_round / actors)
        * actors
        / workload.clients
        * 1000,
        startup_seconds=wall - sum(r["seconds"] for r in rounds),
        peak_rss_bytes=peak,
        uplink_bytes_per_round=int(statistics.median(r["uplink_bytes"] for r in rounds)),
        downlink_bytes_per_round=int(statistics.median(r["downlink_bytes"] for r in rounds)),
        actors=actors,
        sim_accuracy=sim_accuracy,
        plain_accuracy=plain_accuracy,
        plain_before_seconds_per_round=_steady(before),
        plain_after_seconds_per_round=_steady(after),
        same_result=sim_accuracy is not None and abs(sim_accuracy - plain_accuracy) < 1e-12,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated N values")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (default 4)")
    parser.add_argument("--samples-per-client", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--tiny", action="store_true", help="20 records and 1 epoch per client (fixed costs)"
    )
    parser.add_argument("--backend", default="ray_cpu", help="backend config group option")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra override of the simulation (repeatable), e.g. backend.engine=flower",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the run directories")
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients must be comma-separated integers, got {args.clients!r}")
    if not counts or min(counts) < 2 or args.rounds < 2:
        parser.error("--clients values must be >= 2 and --rounds >= 2 (the first is warm-up)")
    samples, epochs = (20, 1) if args.tiny else (args.samples_per_client, args.epochs)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="fedkd-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    workload = {
        "method": "fedavg",
        "model": "mlp (default)",
        "data": "synthetic, 20 features, 4 classes, iid",
        "samples_per_client": samples,
        "epochs": epochs,
        "rounds": args.rounds,
        "backend": args.backend,
        "overrides": list(args.set),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
    }
    print("workload:", json.dumps(workload))
    results = []
    for clients in counts:
        point = measure(
            Workload(clients, args.rounds, samples, epochs),
            work_dir,
            backend=[f"backend={args.backend}", *args.set],
        )
        results.append(asdict(point))
        print(
            f"N={clients:>5}  sim {point.sim_seconds_per_round:7.3f} s/round  "
            f"plain {point.plain_seconds_per_round:7.3f} s/round  ratio {point.ratio:5.2f}  "
            f"overhead {point.overhead_ms_per_message:6.2f} ms/msg  "
            f"start-up {point.startup_seconds:5.1f} s  "
            f"peak RSS {point.peak_rss_bytes / 2**20:7.0f} MiB  "
            f"uplink {point.uplink_bytes_per_round / 1e6:6.2f} MB/round  "
            f"same result: {point.same_result}",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps({"workload": workload, "results": results}, indent=2))
        print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
