"""simulations.pool.keep_pool: runs in one process share one Ray and actor pool when their
settings match; other actor settings get new actors on the same Ray, a failed run and
keep_pool(False) shut everything down (without keep_pool a run stops its own Ray:
test_determinism checks it). Toy ClientApp."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

import simulations.pool as pool

toy = ClientApp()


@toy.query()
def answer(message: Message, context: Context) -> Message:
    metrics = MetricRecord({"pid": os.getpid()})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


BACKEND = {"name": "ray_cpu", "num_cpus": 1, "total_cpus": 2, "log_to_driver": False}


class Recorder:
    """A ServerApp that queries every node once and notes the grid's actors and the pids
    that answered."""

    def __init__(self, *, fail: bool = False) -> None:
        self.actors: list[str] = []
        self.pids: set[int] = set()
        self.app = ServerApp()
        self.app.main()(self._main)
        self.fail = fail

    def _main(self, grid: Grid, context: Context) -> None:
        assert isinstance(grid, pool.RayGrid)
        self.actors = [actor._actor_id.hex() for actor in grid.actors]
        messages = [
            Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type="query")
            for n in grid.get_node_ids()
        ]
        replies = list(grid.send_and_receive(messages, timeout=120))
        assert len(replies) == len(messages) and not any(r.has_error() for r in replies)
        self.pids = {int(r.content.metric_records["metrics"]["pid"]) for r in replies}  # type: ignore[arg-type]
        if self.fail:
            raise RuntimeError("the server failed")


def _run(recorder: Recorder, num_clients: int = 4, **backend: Any) -> None:
    pool.run_on_pool(recorder.app, toy, num_clients=num_clients, backend={**BACKEND, **backend})


@pytest.fixture
def keeping(monkeypatch: pytest.MonkeyPatch, task_identity: None) -> Iterator[list[int]]:
    """keep_pool on, ray.init counted; everything shut down afterwards."""
    pytest.importorskip("ray")
    import ray
    import ray.cloudpickle

    if ray.is_initialized():
        pytest.skip("needs a process without Ray started (the pool starts its own)")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors lack tests/
    inits: list[int] = []
    real_init = ray.init

    def counting_init(*args: Any, **kwargs: Any) -> Any:
        inits.append(1)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", counting_init)
    saved_env = dict(os.environ)
    pool.keep_pool()
    try:
        yield inits
    finally:
        pool.keep_pool(False)
        os.environ.clear()
        os.environ.update(saved_env)


@pytest.mark.ray
def test_runs_share_ray_and_actors_until_their_settings_differ(keeping: list[int]) -> None:
    import ray

    first, second, fewer = Recorder(), Recorder(), Recorder()
    _run(first)
    kept = pool.kept_pool()
    assert kept is not None and kept.runs == 1 and ray.is_initialized()
    _run(second)
    _run(fewer, num_clients=1)  # one client: one of the kept actors serves it
    assert keeping == [1]  # one ray.init for the three runs
    assert len(first.actors) == 2 and second.actors == first.actors
    assert fewer.actors == first.actors[:1]
    assert second.pids == first.pids and len(first.pids) == 2  # the same two processes
    kept = pool.kept_pool()
    assert kept is not None and kept.runs == 3

    other = Recorder()
    _run(other, torch_threads=2)  # other actor settings: new actors, same Ray
    assert keeping == [1] and not set(other.actors) & set(first.actors)
    assert not other.pids & first.pids

    failing = Recorder(fail=True)
    with pytest.raises(RuntimeError, match="the server failed"):
        _run(failing, torch_threads=2)
    assert failing.actors == other.actors  # it ran on the kept pool, then took it down
    assert pool.kept_pool() is None and not ray.is_initialized()

    after = Recorder()
    _run(after)
    assert keeping == [1, 1]  # a fresh Ray after the failure
    pool.keep_pool(False)
    assert pool.kept_pool() is None and not ray.is_initialized()
