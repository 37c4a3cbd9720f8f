"""Tests of the shared strategy machinery with fake replies and an in-process grid (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedkd.apps.client import app as client_app
from fedkd.errors import ConfigError
from fedkd.wire import keys
from strategies.base import FedKDStrategy, weighted_average
from strategies.fedavg import FedAvg


def _reply(request: Message, content: RecordDict) -> Message:
    """A reply to ``request``; its metrics echo the request's round, as the ClientApp does."""
    server_round = request.content.config_records[keys.CONFIG][keys.SERVER_ROUND]
    if keys.METRICS in content.metric_records:
        content.metric_records[keys.METRICS][keys.SERVER_ROUND] = server_round
    return Message(content, reply_to=request)


def _weights_like(strategy: FedKDStrategy, fill: float) -> ArrayRecord:
    return ArrayRecord(
        {
            k: Array(np.full(tuple(v.shape), fill, dtype=np.float32))
            for k, v in strategy.assets.student.state_dict().items()
        }
    )


def test_weighted_average_by_hand() -> None:
    a = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    b = {"w": np.array([3.0, 6.0], dtype=np.float32)}
    out = weighted_average([a, b], [1.0, 3.0])
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5.0
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    assert out["w"].dtype == np.float32
    with pytest.raises(ValueError):
        weighted_average([a], [0.0])


def test_sampling_is_seeded_and_independent_of_node_ids(
    task_identity, in_process_grid, small_plan
) -> None:
    plan = small_plan("strategy=fedavg", "strategy.fraction_train=0.5")
    picks = []
    for grid_seed in (1, 2):  # two grids with different random node ids
        grid = in_process_grid(client_app, 4, seed=grid_seed)
        strategy = plan.strategy
        strategy.node_of_partition = {}
        strategy.discover(grid)
        assert sorted(strategy.node_of_partition) == [0, 1, 2, 3]
        picks.append([strategy.sample_partitions(r, 0.5, stream=0) for r in (1, 2, 3)])
    assert picks[0] == picks[1]
    assert all(len(p) == 2 for p in picks[0])
    assert len({tuple(p) for p in picks[0]}) > 1  # rounds differ


def test_discovery_collects_label_histograms(task_identity, in_process_grid, small_plan) -> None:
    plan = small_plan("strategy=fedavg")
    grid = in_process_grid(client_app, 4)
    plan.strategy.discover(grid)
    data = plan.assets.data
    for pid, histogram in plan.strategy.label_histograms.items():
        expected = np.bincount(data.client_data(pid).train_y, minlength=data.num_classes)
        assert histogram == expected.tolist()


def test_fedavg_aggregate_is_example_weighted(task_identity, small_plan) -> None:
    strategy = small_plan("strategy=fedavg").strategy
    strategy.node_of_partition = {0: 11, 1: 22}
    requests = list(
        strategy.configure_train(1, _weights_like(strategy, 0.0), ConfigRecord(), grid=None)
    )  # type: ignore[arg-type]
    assert [m.metadata.dst_node_id for m in requests] == [11, 22]
    replies = [
        _reply(
            requests[0],
            RecordDict(
                {
                    keys.ARRAYS: _weights_like(strategy, 1.0),
                    keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 10, keys.TRAIN_LOSS: 1.0}),
                }
            ),
        ),
        _reply(
            requests[1],
            RecordDict(
                {
                    keys.ARRAYS: _weights_like(strategy, 4.0),
                    keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 30, keys.TRAIN_LOSS: 3.0}),
                }
            ),
        ),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    for array in arrays.values():  # (10*1 + 30*4) / 40 = 3.25
        np.testing.assert_allclose(array.numpy(), 3.25)
    first = next(iter(strategy.assets.student.state_dict().values()))
    torch.testing.assert_close(first, torch.full_like(first, 3.25))
    round_metrics = strategy.round_metrics[1]
    assert round_metrics["clients_ok"] == 2 and round_metrics["clients_failed"] == 0
    assert round_metrics["train_loss"] == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)
    assert round_metrics["uplink_bytes"] == sum(
        r.content.array_records[keys.ARRAYS].count_bytes() for r in replies
    )
    assert round_metrics["downlink_bytes"] == 2 * _weights_like(strategy, 0.0).count_bytes()


def test_bad_replies_are_rejected_with_counted_reasons(task_identity, small_plan) -> None:
    strategy = small_plan("strategy=fedavg").strategy
    strategy.node_of_partition = {0: 11, 1: 22, 2: 33, 3: 44}
    requests = list(
        strategy.configure_train(1, _weights_like(strategy, 0.0), ConfigRecord(), grid=None)
    )  # type: ignore[arg-type]
    good = RecordDict(
        {
            keys.ARRAYS: _weights_like(strategy, 2.0),
            keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5, keys.TRAIN_LOSS: 0.5}),
        }
    )
    nan = RecordDict(
        {
            keys.ARRAYS: _weights_like(strategy, float("nan")),
            keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5, keys.TRAIN_LOSS: 0.5}),
        }
    )
    wrong_shape = RecordDict(
        {
            keys.ARRAYS: ArrayRecord(
                {k: Array(np.zeros(3, np.float32)) for k in _weights_like(strategy, 0)}
            ),
            keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5, keys.TRAIN_LOSS: 0.5}),
        }
    )
    replies = [
        _reply(requests[0], good),
        _reply(requests[1], nan),
        _reply(requests[2], wrong_shape),
        Message(
            Error(code=2, reason="Traceback (most recent call last):\n  File x\nValueError: boom"),
            reply_to=requests[3],
        ),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    for array in arrays.values():  # only the good reply counts
        np.testing.assert_allclose(array.numpy(), 2.0)
    reasons = strategy.round_metrics[1]["failure_reasons"]
    assert reasons == {
        "weights: non-finite values": 1,
        f"weights: wrong shape for {next(iter(strategy.assets.student.state_dict()))}": 1,
        "client error: ValueError": 1,  # the traceback never crosses
    }
    assert strategy.round_metrics[1]["clients_failed"] == 3


def test_round_is_skipped_below_min_replies(task_identity, small_plan) -> None:
    strategy = small_plan("strategy=fedavg", "strategy.min_train_replies=2").strategy
    strategy.node_of_partition = {0: 11, 1: 22}
    requests = list(
        strategy.configure_train(1, _weights_like(strategy, 0.0), ConfigRecord(), grid=None)
    )  # type: ignore[arg-type]
    before = {k: v.clone() for k, v in strategy.assets.student.state_dict().items()}
    reply = _reply(
        requests[0],
        RecordDict(
            {
                keys.ARRAYS: _weights_like(strategy, 9.0),
                keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5, keys.TRAIN_LOSS: 0.5}),
            }
        ),
    )
    arrays, _ = strategy.aggregate_train(1, [reply])  # the other client timed out
    assert arrays is None
    assert "min_train_replies=2" in strategy.round_metrics[1]["skipped"]
    assert strategy.round_metrics[1]["failure_reasons"] == {"no reply (timeout)": 1}
    for k, v in strategy.assets.student.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_client_failure_does_not_stop_the_run(task_identity, in_process_grid, small_plan) -> None:
    plan = small_plan("strategy=fedavg", "num_rounds=2")
    grid = in_process_grid(client_app, 4, fail_partitions=[2])
    result = plan.strategy.start(
        grid=grid, initial_arrays=_weights_like(plan.strategy, 0.0), num_rounds=2
    )
    assert result.arrays is not None
    for server_round in (1, 2):
        metrics = plan.strategy.round_metrics[server_round]
        assert metrics["clients_ok"] == 3 and metrics["clients_failed"] == 1
        assert metrics["failure_reasons"] == {"client error: RuntimeError": 1}


def test_bad_strategy_options_are_config_errors(small_plan) -> None:
    with pytest.raises(ConfigError, match="fraction_train"):
        small_plan("strategy=fedavg", "strategy.fraction_train=0")
    with pytest.raises(ConfigError, match="strategy 'fedavg'"):
        small_plan("strategy=fedavg", "+strategy.no_such_option=1")


def test_query_message_type_is_used_for_discovery(
    task_identity, in_process_grid, small_plan
) -> None:
    plan = small_plan("strategy=fedavg")
    grid = in_process_grid(client_app, 4)
    plan.strategy.discover(grid)
    assert {m.metadata.message_type for m in grid.sent} == {MessageType.QUERY}
    assert isinstance(plan.strategy, FedAvg)


def test_evaluation_traffic_is_counted_apart(task_identity, in_process_grid, small_plan) -> None:
    plan = small_plan("strategy=fedavg", "strategy.fraction_evaluate=0.5")
    grid = in_process_grid(client_app, 4)
    weights = _weights_like(plan.strategy, 0.0)
    plan.strategy.start(grid=grid, initial_arrays=weights, num_rounds=1)
    metrics = plan.strategy.round_metrics[1]
    assert metrics["downlink_bytes"] == 4 * weights.count_bytes()  # train messages only
    assert metrics["evaluation_downlink_bytes"] == 2 * weights.count_bytes()
    assert 0.0 <= metrics["client_accuracy"] <= 1.0


def test_discovery_waits_until_every_node_has_connected(
    task_identity, in_process_grid, small_plan
) -> None:
    """Simulated SuperNodes register asynchronously: an early empty node list must not end
    the run (it once did, in the second job of a Ray multirun)."""
    plan = small_plan("strategy=fedavg")
    grid = in_process_grid(client_app, 4)
    all_nodes = list(grid.contexts)
    calls = {"n": 0}

    def connecting() -> list[int]:
        calls["n"] += 1
        return all_nodes[: min(4, calls["n"] - 1)]  # 0, 1, 2, 3, then 4 nodes

    grid.get_node_ids = connecting  # type: ignore[method-assign]
    plan.strategy.discover(grid)
    assert sorted(plan.strategy.node_of_partition) == [0, 1, 2, 3]
    assert calls["n"] == 5
