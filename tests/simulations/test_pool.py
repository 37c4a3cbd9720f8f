"""fedkd's Ray engine (simulations.pool.RayGrid) on a toy ClientApp: replies in message order,
state carried between actors, broadcasts stored once, deadlines, dead actors, Ctrl-C."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedkd.errors import ConfigError
from fedkd.run.interrupt import RunInterrupted, clear_stop, request_stop
from simulations.pool import ACTOR_DIED, ClientWorker, RayGrid, pool_size
from simulations.ray_grid import SHARED_RECORD_BYTES

toy = ClientApp()


@toy.query()
def answer(message: Message, context: Context) -> Message:
    """Counts its calls in the node state; sleeps or exits when told to."""
    config = message.content.config_records["config"]
    calls = int(context.state.config_records.get("calls", ConfigRecord({"n": 0}))["n"]) + 1
    context.state.config_records["calls"] = ConfigRecord({"n": calls})
    if config.get("sleep"):
        time.sleep(float(config["sleep"]))  # type: ignore[arg-type]
    if config.get("die"):
        os._exit(1)
    if config.get("raise"):
        raise ValueError("asked to fail")
    metrics = MetricRecord(
        {
            "partition": int(context.node_config["partition-id"]),  # type: ignore[arg-type]
            "calls": calls,
            "pid": os.getpid(),
            "value": int(config.get("value", 0)),  # type: ignore[arg-type]
            "w": int(
                sum(a.numpy().sum() for a in message.content.array_records.get("w", {}).values())
            ),
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


@pytest.fixture(scope="module")
def actors() -> Iterator[list[Any]]:
    pytest.importorskip("ray")
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors lack tests/
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    worker = ray.remote(ClientWorker).options(num_cpus=1, max_restarts=2, max_task_retries=0)
    handles = [worker.remote(toy, 1, {}) for _ in range(2)]
    ray.get([h.pid.remote() for h in handles])
    yield handles
    ray.shutdown()


def _query(grid: RayGrid, node_id: int, **config: Any) -> Message:
    content = RecordDict({"config": ConfigRecord(config)})
    return Message(content=content, message_type="query", dst_node_id=node_id)


def _metric(reply: Message, key: str) -> int:
    return int(reply.content.metric_records["metrics"][key])  # type: ignore[arg-type]


@pytest.mark.ray
def test_replies_come_in_message_order_with_state_kept_across_actors(actors, task_identity):
    grid = RayGrid(toy, 6, actors)
    nodes = list(grid.get_node_ids())
    for round_ in (1, 2, 3):
        replies = list(grid.send_and_receive([_query(grid, n, value=round_) for n in nodes]))
        assert [r.metadata.src_node_id for r in replies] == nodes
        assert [_metric(r, "partition") for r in replies] == list(range(6))
        assert {_metric(r, "calls") for r in replies} == {round_}  # state came back each time
        assert {_metric(r, "value") for r in replies} == {round_}
    # nodes moved between both actors and still counted their calls correctly
    assert len({_metric(r, "pid") for r in replies}) == 2


@pytest.mark.ray
def test_a_broadcast_is_stored_once_and_messages_to_one_node_run_in_order(actors, task_identity):
    grid = RayGrid(toy, 3, actors)
    nodes = list(grid.get_node_ids())
    weights = ArrayRecord({"w": Array(np.zeros(SHARED_RECORD_BYTES, dtype=np.uint8))})
    config = ConfigRecord({"value": 7})  # shared too, but small: travels in each call
    messages = [
        Message(RecordDict({"config": config, "w": weights}), dst_node_id=n, message_type="query")
        for n in nodes
    ]
    own = ArrayRecord({"w": Array(np.ones(SHARED_RECORD_BYTES, dtype=np.uint8))})  # not shared
    messages += [  # the same node again
        Message(RecordDict({"config": ConfigRecord({"value": 8}), "w": own}),
                dst_node_id=nodes[0], message_type="query")
    ]  # fmt: skip
    grid._enqueue(messages)
    grid._dispatch()
    assert len(grid._inflight) == 3 and len(grid._queue) == 1  # node 0 is busy: it waits
    # one object-store copy, of the big record all three broadcasts carry
    stored = [record for record, ref in grid._record_refs.values() if ref is not None]
    assert stored == [weights]
    while grid._inflight or grid._queue:
        grid._progress(wait=0.1)
    done = [grid._done[k] for k in sorted(grid._done)]
    assert [_metric(r, "calls") for r in done] == [1, 1, 1, 2]  # node 0 saw both, in order
    assert [_metric(r, "value") for r in done] == [7, 7, 7, 8]
    assert [_metric(r, "w") for r in done] == [0, 0, 0, SHARED_RECORD_BYTES]  # each its own
    assert not grid._record_refs  # forgotten once the grid is idle


@pytest.mark.ray
def test_a_late_reply_is_dropped_but_its_state_update_is_kept(actors, task_identity):
    grid = RayGrid(toy, 2, actors)
    slow, fast = grid.get_node_ids()
    started = time.monotonic()
    replies = list(
        grid.send_and_receive([_query(grid, slow, sleep=1.5), _query(grid, fast)], timeout=0.5)
    )
    assert time.monotonic() - started < 1.4
    assert [r.metadata.src_node_id for r in replies] == [fast]
    again = list(grid.send_and_receive([_query(grid, slow)], timeout=10))
    assert _metric(again[0], "calls") == 2  # waited for the straggler, then ran after it


@pytest.mark.ray
def test_client_errors_and_dead_actors_become_error_replies(actors, task_identity):
    grid = RayGrid(toy, 2, actors)
    first, second = grid.get_node_ids()
    replies = list(grid.send_and_receive([_query(grid, first, **{"raise": 1})], timeout=30))
    assert replies[0].has_error() and "asked to fail" in replies[0].error.reason
    replies = list(grid.send_and_receive([_query(grid, second, die=1)], timeout=30))
    assert replies[0].has_error() and replies[0].error.reason.startswith(ACTOR_DIED)
    # Ray restarts the actor; the pool keeps serving every node
    replies = list(grid.send_and_receive([_query(grid, n) for n in (first, second)], timeout=60))
    assert [r.has_error() for r in replies] == [False, False]
    assert _metric(replies[1], "calls") == 1  # the dead call's state update never happened
    deadline = time.monotonic() + 60
    while grid._suspended and time.monotonic() < deadline:  # the probe finds it restarted
        grid._progress(wait=0.1)
    assert not grid._suspended  # back in the pool (and healthy for the next test)


@pytest.mark.ray
def test_an_actor_that_cannot_start_says_why(actors, task_identity):
    """Actors are not waited for at start: a constructor's error surfaces on the first
    messages, and the run ends naming it."""
    import ray

    worker = ray.remote(ClientWorker).options(num_cpus=0, max_restarts=0, max_task_retries=0)
    grid = RayGrid(toy, 1, [worker.remote(toy, "two", {})])  # torch_threads must be an int
    (node,) = grid.get_node_ids()
    with pytest.raises(RuntimeError, match="TypeError"):
        for _ in range(2):
            grid.send_and_receive([_query(grid, node)], timeout=60)


@pytest.mark.ray
def test_a_stop_request_interrupts_the_wait(actors, task_identity):
    grid = RayGrid(toy, 1, actors)
    (node,) = grid.get_node_ids()
    request_stop()
    try:
        with pytest.raises(RunInterrupted):
            grid.send_and_receive([_query(grid, node, sleep=0.5)], timeout=30)
    finally:
        clear_stop()


def test_pool_size_follows_the_resources() -> None:
    backend = {"num_cpus": 1, "num_gpus": 0.0}
    assert pool_size(backend, 10, {"CPU": 2.0}) == 2
    assert pool_size(backend, 1, {"CPU": 8.0}) == 1  # never more actors than clients
    assert pool_size({**backend, "max_actors": 3}, 10, {"CPU": 8.0}) == 3
    assert pool_size({"num_cpus": 2}, 10, {"CPU": 5.0}) == 2
    assert pool_size({"num_cpus": 1, "num_gpus": 0.25}, 10, {"CPU": 16.0, "GPU": 1.0}) == 4
    # a shared cluster: what is free now, and one actor that waits when nothing is
    assert pool_size(backend, 10, {"CPU": 8.0}, {"CPU": 3.5}) == 3
    assert pool_size(backend, 10, {"CPU": 8.0}, {"CPU": 0.0}) == 1
    with pytest.raises(ConfigError, match="not enough for one client"):
        pool_size({"num_cpus": 4}, 10, {"CPU": 2.0})
    with pytest.raises(ConfigError, match="not enough for one client"):
        pool_size({"num_cpus": 1, "num_gpus": 0.5}, 10, {"CPU": 2.0})


@pytest.mark.ray
def test_short_messages_are_batched_into_few_calls_with_results_unchanged(actors, task_identity):
    grid = RayGrid(toy, 12, actors)
    nodes = list(grid.get_node_ids())
    first = list(grid.send_and_receive([_query(grid, n, value=1) for n in nodes], timeout=60))
    assert grid._seconds["query"] < 0.05  # measured: a toy query takes far less than a call
    grid._enqueue([_query(grid, n, value=2) for n in nodes])
    grid._dispatch()
    calls = list(grid._inflight.values())
    assert len(calls) < len(nodes) and max(len(c.tasks) for c in calls) > 1
    while grid._inflight or grid._queue:
        grid._progress(wait=0.1)
    second = [grid._done[k] for k in sorted(grid._done)]
    assert [r.metadata.src_node_id for r in second] == nodes
    assert [_metric(r, "calls") for r in first] == [1] * 12
    assert [_metric(r, "calls") for r in second] == [2] * 12  # every state update kept
