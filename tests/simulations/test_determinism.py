"""Reproducibility on Ray: the same config and seed give the same numbers, run after run and
whatever the size of the actor pool; another seed gives other numbers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedkd.config import compose_config
from fedkd.run.results import read_metrics
from simulations.run import run

pytestmark = pytest.mark.slow

# FedMD: clients keep their models in the node state between rounds and digest the consensus,
# so round 2 depends on what each client's model became in round 1 (whichever actor ran it).
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
]

Rows = list[dict[str, Any]]


def _without_timings(value: Any) -> Any:
    """A metrics row without wall-clock entries (``seconds`` and ``*_seconds``, at any depth)."""
    if isinstance(value, dict):
        return {
            k: _without_timings(v)
            for k, v in value.items()
            if k != "seconds" and not k.endswith("_seconds")
        }
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _simulate(overrides: list[str], run_dir: Path) -> Rows:
    """Run the real runner in this process; the metrics rows without timings.

    The engine sets process-wide state (Flower's task identity, ``PYTHONPATH`` and Ray
    variables in ``os.environ``); it is put back so later tests see this process unchanged.
    """
    import ray

    saved_env = dict(os.environ)
    saved_identity = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    try:
        summary = run(compose_config([*SMALL, *overrides]), run_dir)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved_identity
    assert summary["status"] == "completed", summary.get("error")
    assert not ray.is_initialized()  # the engine shut its Ray session down
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients_ok"] == 4 and r["clients_failed"] == 0 for r in rows[1:])
    return [_without_timings(r) for r in rows]


@pytest.fixture(scope="module")
def simulate(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Rows]:
    """Rows of named runs, each simulated once per module (Ray start-up is the slow part)."""
    runs = {
        "ray": ["backend.total_cpus=2", "backend.num_cpus=1"],  # 2 actors of 1 core each
        "ray-one-actor": ["backend.total_cpus=2", "backend.num_cpus=2"],  # 1 actor, 2 cores
        "flower": ["backend.total_cpus=2", "backend.engine=flower"],  # Flower's own engine
        # No Ray: the inline engine gives the Ray numbers (tests/simulations/test_run.py) at a
        # fraction of the start-up cost, which is all the different-seed check needs.
        "inline": ["backend=inline"],
        "inline-again": ["backend=inline"],
        "inline-seed-1": ["backend=inline", "seed=1"],
    }
    cache: dict[str, Rows] = {}

    def rows(name: str) -> Rows:
        if name not in cache:
            cache[name] = _simulate(runs[name], tmp_path_factory.mktemp(name))
        return cache[name]

    return rows


@pytest.mark.ray
def test_same_seed_gives_identical_rows_across_runs_and_engines(
    simulate: Callable[[str], Rows],
) -> None:
    """Twice in-process, and on Ray (fedkd's actor pool) with clients spread over two actors
    in whatever order Ray schedules them: the same rows."""
    first = simulate("inline")
    assert first[-1]["student_accuracy"] is not None and "ensemble_accuracy" in first[-1]
    assert first == simulate("inline-again")
    assert first == simulate("ray")


@pytest.mark.ray
def test_flowers_simulation_engine_gives_the_same_rows(simulate: Callable[[str], Rows]) -> None:
    """``backend.engine=flower`` (Flower's run_simulation) and fedkd's actor pool agree."""
    assert simulate("flower") == simulate("ray")


@pytest.mark.ray
def test_actor_pool_size_does_not_change_a_number(simulate: Callable[[str], Rows]) -> None:
    assert simulate("ray-one-actor") == simulate("ray")


@pytest.mark.ray
def test_another_seed_gives_other_rows(simulate: Callable[[str], Rows]) -> None:
    assert simulate("inline") == simulate("ray")  # so the seed is the only difference below
    other = simulate("inline-seed-1")
    assert other != simulate("ray")
    assert [r["student_accuracy"] for r in other] != [
        r["student_accuracy"] for r in simulate("ray")
    ]
