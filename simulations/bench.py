"""``python -m simulations.bench``: fedkd's simulation against a plain PyTorch loop doing the
same work, for N clients and one or more backends, in one invocation.

Workloads (``--workload``; stated in :mod:`simulations.bench_workloads`, printed with the
results and written into the JSON):

- ``default``: FedAvg of the default MLP on the ``synthetic`` dataset (20 features, 4
  classes, IID partitions), ``--samples-per-client`` (1000) records and ``--epochs`` (5)
  epochs per client, about 0.1 s per client round on one core of the machine the docs were
  measured on;
- ``tiny`` (``--tiny`` is its deprecated alias): the same with 20 records and 1 epoch, where
  fixed costs dominate;
- ``reference``: ``experiment=reference`` with FedAvg (digits, the reference MLP, 2 local
  epochs of SGD), with the partition scaled to N where the reference's cannot be drawn.

A client's round, in both paths, is what fedkd's ClientApp does for FedAvg: load the global
weights, local SGD over its training records, accuracy on its local test split (when it has
one), its predictions on the server test set (the evaluation-only diagnostics,
``diagnostics.client_test_predictions``), and, when the strategy's ``fraction_evaluate`` asks,
the federated evaluation of the new global model on its local test split. The server
averages the weights by example count and evaluates the model on the test set and on the
pooled local test splits.

Both paths run the same seeded computation, so their final accuracies are equal (reported
as ``same_result``): the plain loop is the simulation without Flower, Ray and messages. The
plain loop runs on one torch thread in this process, before and after the simulations (a
shared machine's speed drifts; the two loops bracket them); each simulation runs in a child
process (``python -m simulations.run``): with Ray actors of one thread each, one per core
(``--set backend.max_actors=1`` for one), or in that process (``inline``, ``batched``).
``--backend inline,batched,ray_cpu`` measures every backend against the same plain loops.

Reported per N and backend (the JSON's ``results``): ``sim_seconds_per_round`` and
``plain_seconds_per_round`` (median over the rounds after the first; for the plain loop, over
both loops' rounds), ``ratio`` (sim / plain: 1/actors is the physical limit),
``overhead_ms_per_message`` (actor time per training message beyond the plain loop's,
``(sim - plain / actors) * actors / N``), ``startup_seconds`` (process start to the first
round's first message, from the run's ``summary.json``; where the run does not report it, the
simulation's wall time not spent in rounds), ``outputs_seconds`` (plots, report, export,
shutdown, from ``summary.json``; else null), ``peak_rss_bytes`` (the simulation's whole
process tree), ``uplink_bytes_per_round``. The file also holds ``import_floor_seconds``: the
median wall time of three bare ``python -c "import torch"`` processes, measured in the same
invocation.
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

from simulations.bench_workloads import (
    WORKLOAD_NAMES,
    Backend,
    Workload,
    import_floor_seconds,
    make_workload,
    parse_backends,
)
from simulations.engine import IN_PROCESS_BACKENDS

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Point:
    """One line of the results (the JSON file's ``results`` entries): one backend at N."""

    clients: int
    backend: str
    engine: str | None  # fedkd or flower on Ray backends, None in process
    sim_seconds_per_round: float
    plain_seconds_per_round: float
    ratio: float
    overhead_ms_per_message: float
    startup_seconds: float
    startup_source: str  # "summary" (the run's own figure) or "harness" (wall not in rounds)
    outputs_seconds: float | None
    wall_seconds: float
    peak_rss_bytes: int
    uplink_bytes_per_round: int
    downlink_bytes_per_round: int
    actors: int
    sim_accuracy: float | None
    plain_accuracy: float | None
    plain_before_seconds_per_round: float
    plain_after_seconds_per_round: float
    same_result: bool
    workload: str
    data: str


# ---------------------------------------------------------------------- the plain loop
def plain_loop(overrides: Sequence[str]) -> tuple[list[float], float]:
    """The simulation's computation without Flower: per-round seconds and final accuracy."""
    from fedkd.apps.server import prepare_run, validation_set
    from fedkd.config import compose_config
    from fedkd.train import evaluate, predict_probs, train_local
    from strategies.base import round_seed, student_arrays, weighted_average
    from strategies.core.transport import sample_partitions

    torch.set_num_threads(1)  # what each simulated client gets
    plan = prepare_run(compose_config(list(overrides)))
    setup, data = plan.assets.setup, plan.assets.data
    device = plan.assets.device
    student = plan.assets.student
    strategy = plan.strategy
    model = strategy.architecture_model(0)  # a separate object, as a client's
    valid_x, valid_y = validation_set(data)
    clients = [data.client_data(p) for p in range(setup.num_clients)]
    seconds: list[float] = []
    accuracy = 0.0
    for server_round in range(1, plan.options.num_rounds + 1):
        started = time.perf_counter()
        start_state = {k: v.clone() for k, v in student.state_dict().items()}
        states, sizes = [], []
        sampled = sample_partitions(
            range(len(clients)),
            strategy.fraction_train,
            seed=setup.seed,
            server_round=server_round,
            stream=0,
        )
        for partition_id in sampled:  # the train message
            client = clients[partition_id]
            model.load_state_dict(start_state, strict=True)
            train_local(
                model,
                client.train_x,
                client.train_y,
                settings=setup.local,
                seed=round_seed(setup.seed, server_round, 0, partition_id),
                device=device,
            )
            if len(client.test_y):  # the reply's local-accuracy
                evaluate(model, client.test_x, client.test_y, device=device)
            if plan.assets.client_test_predictions:
                predict_probs(model, data.test_x, device=device)
            states.append({k: v.numpy() for k, v in student_arrays(model).items()})
            sizes.append(float(len(client.train_y)))
        averaged = weighted_average(states, sizes)
        student.load_state_dict({k: torch.from_numpy(v) for k, v in averaged.items()})
        _, accuracy = evaluate(student, data.test_x, data.test_y, device=device)
        if len(valid_y):
            evaluate(student, valid_x, valid_y, device=device)
        if strategy.fraction_evaluate > 0:  # federated evaluation: the evaluate message
            global_state = student.state_dict()
            for partition_id in sample_partitions(
                range(len(clients)),
                strategy.fraction_evaluate,
                seed=setup.seed,
                server_round=server_round,
                stream=1,
            ):
                client = clients[partition_id]
                model.load_state_dict(global_state, strict=True)
                if len(client.test_y):
                    evaluate(model, client.test_x, client.test_y, device=device)
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


#: What :func:`simulate` returns: wall seconds, peak tree RSS, metrics rows, summary.
Run = tuple[float, int, list[dict[str, Any]], dict[str, Any]]


def simulate(overrides: Sequence[str], run_dir: Path, *, extra: Sequence[str] = ()) -> Run:
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


def actor_count(backend: Backend, extra: Sequence[str], clients: int) -> int:
    """Processes the simulation runs clients on: one for the in-process backends (inline,
    batched), else one actor per core (at most one per client), or ``backend.max_actors``."""
    if backend.name in IN_PROCESS_BACKENDS:
        return 1
    count = min(os.cpu_count() or 1, clients)
    for override in extra:
        if override.startswith("backend.max_actors="):
            count = min(count, int(override.split("=", 1)[1]))
    return max(1, count)


def measure(
    workload: Workload,
    work_dir: Path,
    *,
    backends: Sequence[Backend],
    extra: Sequence[str] = (),
) -> list[Point | dict[str, Any]]:
    """One benchmark point per backend on one workload: the plain loop, every backend's
    simulation, the plain loop again. The plain figure is the median over both loops'
    steady rounds, so a machine that slows down or speeds up meanwhile (shared hosts do)
    moves both sides alike, and every backend is compared with the same figure. A backend
    whose run fails gives ``{"clients", "backend", "engine", "error", ...}`` instead."""
    overrides = workload.overrides()
    before, plain_accuracy = plain_loop(overrides)
    runs: list[tuple[Backend, Run | RuntimeError]] = []
    for backend in backends:
        name = f"sim-{workload.name}-{workload.clients}-{backend.label.replace(':', '-')}"
        run: Run | RuntimeError
        try:
            run = simulate(overrides, work_dir / name, extra=[*backend.overrides(), *extra])
        except RuntimeError as exc:  # this backend failed: measure the others
            run = exc
        runs.append((backend, run))
    after, _ = plain_loop(overrides)
    plain = PlainFigures(
        seconds_per_round=float(statistics.median([*before[1:], *after[1:]])),
        before_seconds_per_round=_steady(before),
        after_seconds_per_round=_steady(after),
        accuracy=plain_accuracy,
    )
    points: list[Point | dict[str, Any]] = []
    for backend, run in runs:
        if isinstance(run, RuntimeError):
            points.append(
                {
                    "clients": workload.clients,
                    "backend": backend.name,
                    "engine": backend.resolved_engine(extra),
                    "error": str(run),
                    "workload": workload.name,
                    "data": workload.data,
                }
            )
        else:
            points.append(_point(workload, backend, run, plain, extra=extra))
    return points


@dataclass(frozen=True)
class PlainFigures:
    """The plain loops' side of one N: seconds per round (both loops, each) and accuracy."""

    seconds_per_round: float
    before_seconds_per_round: float
    after_seconds_per_round: float
    accuracy: float


def _point(
    workload: Workload,
    backend: Backend,
    run: Run,
    plain: PlainFigures,
    *,
    extra: Sequence[str],
) -> Point:
    """One backend's result line from its run (:func:`simulate`) and the plain figures."""
    wall, peak, rows, summary = run
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    sim_round = _steady([r["seconds"] for r in rounds])
    actors = actor_count(backend, extra, workload.clients)
    sim_accuracy = summary["final"].get("student_accuracy")
    reported = summary.get("startup_seconds")  # the run's own clock (fedkd.run.timing)
    outputs = summary.get("outputs_seconds")
    return Point(
        clients=workload.clients,
        backend=backend.name,
        engine=backend.resolved_engine(extra),
        sim_seconds_per_round=sim_round,
        plain_seconds_per_round=plain.seconds_per_round,
        ratio=sim_round / plain.seconds_per_round,
        overhead_ms_per_message=(sim_round - plain.seconds_per_round / actors)
        * actors
        / workload.clients
        * 1000,
        startup_seconds=(
            float(reported) if reported is not None else wall - sum(r["seconds"] for r in rounds)
        ),
        startup_source="summary" if reported is not None else "harness",
        outputs_seconds=None if outputs is None else float(outputs),
        wall_seconds=wall,
        peak_rss_bytes=peak,
        uplink_bytes_per_round=int(statistics.median(r["uplink_bytes"] for r in rounds)),
        downlink_bytes_per_round=int(statistics.median(r["downlink_bytes"] for r in rounds)),
        actors=actors,
        sim_accuracy=sim_accuracy,
        plain_accuracy=plain.accuracy,
        plain_before_seconds_per_round=plain.before_seconds_per_round,
        plain_after_seconds_per_round=plain.after_seconds_per_round,
        same_result=sim_accuracy is not None and abs(sim_accuracy - plain.accuracy) < 1e-12,
        workload=workload.name,
        data=workload.data,
    )


def _line(point: Point | dict[str, Any]) -> str:
    """One printed result line."""
    if isinstance(point, dict):
        return f"N={point['clients']:>5}  {point['backend']:<8} FAILED: {point['error']}"
    backend = point.backend if point.engine is None else f"{point.backend}:{point.engine}"
    outputs = "-" if point.outputs_seconds is None else f"{point.outputs_seconds:5.1f} s"
    return (
        f"N={point.clients:>5}  {backend:<14} sim {point.sim_seconds_per_round:7.3f} s/round  "
        f"plain {point.plain_seconds_per_round:7.3f} s/round  ratio {point.ratio:5.2f}  "
        f"overhead {point.overhead_ms_per_message:6.2f} ms/msg  "
        f"start-up {point.startup_seconds:5.1f} s ({point.startup_source})  outputs {outputs}  "
        f"peak RSS {point.peak_rss_bytes / 2**20:7.0f} MiB  "
        f"uplink {point.uplink_bytes_per_round / 1e6:6.2f} MB/round  "
        f"same result: {point.same_result}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked: ``counts`` (list of N), ``workload`` (resolved from
    ``--tiny``) and ``backends`` (:class:`Backend` list) are added to the namespace."""
    parser = argparse.ArgumentParser(
        description="fedkd's simulation against a plain PyTorch loop doing the same work, "
        "for N clients and one or more backends (docs/BENCHMARKS.md, 'The harness')."
    )
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated N values")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (default 4)")
    parser.add_argument(
        "--workload",
        choices=WORKLOAD_NAMES,
        default=None,
        help="default: synthetic, --samples-per-client records and --epochs epochs per "
        "client; tiny: 20 records, 1 epoch (fixed costs); reference: experiment=reference "
        "with FedAvg (digits, partition scaled to N)",
    )
    parser.add_argument("--samples-per-client", type=int, default=1000, help="default workload")
    parser.add_argument("--epochs", type=int, default=5, help="default workload")
    parser.add_argument("--tiny", action="store_true", help="deprecated alias of --workload tiny")
    parser.add_argument(
        "--backend",
        default="ray_cpu",
        help="comma list of backends, each measured against the same plain loops: inline, "
        "batched, ray_cpu, ray_gpu; NAME:ENGINE picks a Ray engine (ray_cpu:flower)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra override of every simulation (repeatable), e.g. backend.max_actors=1",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the run directories")
    args = parser.parse_args(argv)
    try:
        args.counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients must be comma-separated integers, got {args.clients!r}")
    if not args.counts or min(args.counts) < 2 or args.rounds < 2:
        parser.error("--clients values must be >= 2 and --rounds >= 2 (the first is warm-up)")
    if args.tiny:
        if args.workload not in (None, "tiny"):
            parser.error(f"--tiny (--workload tiny) contradicts --workload {args.workload}")
        args.workload = "tiny"
    args.workload = args.workload or "default"
    try:
        args.backends = parse_backends(args.backend)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="fedkd-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    workloads = [
        make_workload(
            args.workload,
            clients,
            args.rounds,
            samples_per_client=args.samples_per_client,
            epochs=args.epochs,
        )
        for clients in args.counts
    ]
    workload = {
        **workloads[0].describe(),
        "rounds": args.rounds,
        "backend": args.backend,
        "backends": [b.label for b in args.backends],
        "overrides": list(args.set),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
    }
    print("workload:", json.dumps(workload), flush=True)
    floor = import_floor_seconds()
    print(f"import floor: {floor:.2f} s (python -c 'import torch', median of 3)", flush=True)
    results: list[dict[str, Any]] = []
    for point_workload in workloads:
        print(f"N={point_workload.clients:>5}  data: {point_workload.data}", flush=True)
        for point in measure(
            point_workload, work_dir, backends=args.backends, extra=list(args.set)
        ):
            results.append(point if isinstance(point, dict) else asdict(point))
            print(_line(point), flush=True)
    if args.out:
        report = {"workload": workload, "import_floor_seconds": floor, "results": results}
        args.out.write_text(json.dumps(report, indent=2))
        print(f"results in {args.out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
