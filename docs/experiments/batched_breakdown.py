"""Where a round of ``backend=batched`` goes (docs/BENCHMARKS.md): the reference workload
of ``simulations.bench`` (FedAvg, digits, the reference MLP, IID, 100 clients), with timing
wrappers around the batched training, the batched prediction, each client's two stages and
the whole exchange, and the same clients' sequential ``train_local`` calls for comparison.

    python docs/experiments/batched_breakdown.py [--clients 100] [--rounds 8]

Prints seconds per round (medians over the rounds after the first); what the round
spends outside the exchange is the server's (validation, decoding, averaging, evaluation).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import simulations.batched as batched
from fedkd.config import compose_config
from fedkd.run.results import read_metrics
from fedkd.train import train_local
from simulations.bench_workloads import make_workload
from simulations.run import run

SPENT: dict[str, list[float]] = defaultdict(list)


def _timed(owner: object, name: str, label: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _timed(batched, "train_group", "batched training")
    _timed(batched, "predict_group", "batched prediction")
    _timed(batched, "begin_train", "first stage (all clients)")
    _timed(batched, "finish_train", "payloads (all clients)")
    _timed(batched.BatchedGrid, "send_and_receive", "exchange")
    workload = make_workload("reference", args.clients, args.rounds)
    overrides = [*workload.overrides(), "backend=batched", "report.html=false"]
    with tempfile.TemporaryDirectory() as tmp:
        run(compose_config(overrides), Path(tmp) / "run")
        rows = read_metrics(Path(tmp) / "run")
    whole = statistics.median(row["seconds"] for row in rows[2:])
    print(f"{'round (metrics.jsonl)':28s} {whole:.4f} s/round")
    per_round = {label: _per_round(values, args) for label, values in SPENT.items()}
    for label, seconds in per_round.items():
        print(f"{label:28s} {seconds:.4f} s/round")
    print(f"{'sequential train_local':28s} {_sequential(overrides):.4f} s/round")


def _per_round(values: list[float], args: argparse.Namespace) -> float:
    """Median per round after the first: calls once per client are summed per round."""
    calls = len(values) // args.rounds if len(values) >= args.rounds else 1
    rounds = [sum(values[i * calls : (i + 1) * calls]) for i in range(len(values) // calls)]
    rounds = rounds[-args.rounds :]
    return statistics.median(rounds[1:] if len(rounds) > 1 else rounds)


def _sequential(overrides: list[str]) -> float:
    """One round of the same clients' local training, one after another (median of 3)."""
    from fedkd.apps.server import prepare_run
    from strategies.base import round_seed

    plan = prepare_run(compose_config(overrides))
    setup, data = plan.assets.setup, plan.assets.data
    model = plan.strategy.architecture_model(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = []
    for server_round in (1, 2, 3):
        started = time.perf_counter()
        for partition_id in range(setup.num_clients):
            client = data.client_data(partition_id)
            model.load_state_dict(start)
            seed = round_seed(setup.seed, server_round, 0, partition_id)
            train_local(model, client.train_x, client.train_y, settings=setup.local, seed=seed)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


if __name__ == "__main__":
    main()
