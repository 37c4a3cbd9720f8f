"""FedProto: aggregation and reply checks on fake replies (no Ray), option checks, and runs
on an in-process grid (homogeneous and heterogeneous clients)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.run.results import read_metrics
from fedkd.wire import keys
from fedkd.wire.payloads.prototypes import PrototypeOptions

DIGITS = ["dataset=digits", "client.epochs=1", "strategy=fedproto"]


def _strategy(small_overrides, *extra: str):
    """FedProto on the small task (3 classes, 6 features) on 2 clients with an embedding
    width D = 4."""
    small = small_overrides(2, "model.hidden=[4]", "strategy=fedproto")
    return prepare_run(compose_config([*small, *extra])).strategy


def _requests(strategy, server_round: int = 1) -> list[Message]:
    strategy.node_of_partition = {0: 11, 1: 22}
    return list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid=None))


def _reply(request: Message, num_examples: int = 10, **arrays: np.ndarray) -> Message:
    record = ArrayRecord({name: Array(np.asarray(a)) for name, a in arrays.items()})
    return Message(
        RecordDict(
            {
                keys.METRICS: MetricRecord(
                    {
                        keys.NUM_EXAMPLES: num_examples,
                        keys.TRAIN_LOSS: 0.5,
                        keys.SERVER_ROUND: request.content.config_records[keys.CONFIG][
                            keys.SERVER_ROUND
                        ],
                    }
                ),
                keys.PREDICTIONS: record,
            }
        ),
        reply_to=request,
    )


def _shared(prototypes, soft, counts) -> dict[str, np.ndarray]:
    return {
        keys.PROTOTYPES: np.asarray(prototypes, dtype=np.float32),
        keys.PROTOTYPE_SOFT: np.asarray(soft, dtype=np.float32),
        keys.PROTOTYPE_COUNTS: np.asarray(counts, dtype=np.float32),
    }


# client 0 holds classes 0 and 1, client 1 classes 0 and 2
P0 = [[1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
P1 = [[3.0, 4.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
S0 = [[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.0, 0.0, 0.0]]
S1 = [[0.4, 0.5, 0.1], [0.0, 0.0, 0.0], [0.1, 0.1, 0.8]]
N0 = [2.0, 6.0, 0.0]
N1 = [6.0, 0.0, 3.0]


def test_configure_train_asks_for_prototypes_and_sends_no_weights(
    task_identity, small_overrides
) -> None:
    strategy = _strategy(small_overrides, "strategy.proto_weight=0.5", "strategy.soft_weight=0.2")
    config = _requests(strategy)[0].content.config_records[keys.CONFIG]
    assert config[keys.KEEP_MODEL] is True
    assert config[keys.PAYLOADS] == "client-metrics,prototypes,test-predictions"
    assert (config[keys.PROTO_WEIGHT], config[keys.PROTO_SOFT_WEIGHT]) == (0.5, 0.2)
    assert config[keys.PROTO_TEMPERATURE] == 1.0
    sent = PrototypeOptions.from_config(config)  # what a client reads: no defaults of its own
    assert sent == strategy.prototype_options == PrototypeOptions(0.5, 0.2, 1.0)
    with pytest.raises(ConfigError, match="proto-temperature"):
        PrototypeOptions.from_config(
            ConfigRecord({keys.PROTO_WEIGHT: 1.0, keys.PROTO_SOFT_WEIGHT: 0.0})
        )
    assert strategy.embedding_width == 4 and not strategy.has_student


def test_aggregate_is_count_weighted_per_class_and_sent_back(
    task_identity, small_overrides
) -> None:
    strategy = _strategy(small_overrides)
    requests = _requests(strategy)
    replies = [
        _reply(requests[0], 8, **_shared(P0, S0, N0)),
        _reply(requests[1], 9, **_shared(P1, S1, N1)),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and len(arrays) == 0
    targets = strategy.round_targets
    # class 0: (2*P0[0] + 6*P1[0]) / 8; class 1: client 0 only; class 2: client 1 only
    np.testing.assert_allclose(
        targets[keys.PROTOTYPES].numpy(),
        [[2.5, 3.0, 0.0, 2.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        targets[keys.PROTOTYPE_SOFT].numpy(),
        [[0.5, 0.4, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]],
        atol=1e-6,
    )
    np.testing.assert_allclose(targets[keys.PROTOTYPE_COUNTS].numpy(), [8.0, 6.0, 3.0])
    metrics = strategy.round_metrics[1]
    assert metrics["prototype_classes"] == 3 and metrics["clients_ok"] == 2
    assert metrics["uplink_bytes"] == sum(
        r.content.array_records[keys.PREDICTIONS].count_bytes() for r in replies
    )
    # round 2 carries the global prototypes to every sampled client, counted as downlink
    round2 = _requests(strategy, server_round=2)
    assert round2[0].content.config_records[keys.CONFIG][keys.TARGETS_ROUND] == 1
    sent = round2[1].content.array_records[keys.TARGETS]
    np.testing.assert_array_equal(sent[keys.PROTOTYPES].numpy(), targets[keys.PROTOTYPES].numpy())
    assert strategy.round_metrics[2]["downlink_bytes"] == 2 * targets.count_bytes()


def test_a_class_nobody_holds_has_no_global_prototype(task_identity, small_overrides) -> None:
    strategy = _strategy(small_overrides)
    requests = _requests(strategy)
    absent = [2.0, 6.0, 0.0]
    strategy.aggregate_train(
        1,
        [
            _reply(requests[0], 8, **_shared(P0, S0, absent)),
            _reply(requests[1], 8, **_shared(P0, S0, absent)),
        ],
    )
    assert strategy.round_metrics[1]["prototype_classes"] == 2
    np.testing.assert_array_equal(strategy.round_targets[keys.PROTOTYPES].numpy()[2], 0.0)


GOOD = _shared(P0, S0, N0)


@pytest.mark.parametrize(
    ("arrays", "num_examples", "reason"),
    [
        ({k: v for k, v in GOOD.items() if k != keys.PROTOTYPE_SOFT}, 8, "missing prototypes"),
        ({}, 8, "missing prototypes"),
        ({**GOOD, keys.PROTOTYPES: np.zeros((3, 5), np.float32)}, 8, "wrong shape"),
        ({**GOOD, keys.PROTOTYPE_SOFT: np.zeros((3, 2), np.float32)}, 8, "wrong shape"),
        ({**GOOD, keys.PROTOTYPE_COUNTS: np.zeros((2,), np.float32)}, 8, "wrong shape"),
        ({**GOOD, keys.PROTOTYPES: np.full((3, 4), np.nan, np.float32)}, 8, "not finite"),
        ({**GOOD, keys.PROTOTYPE_COUNTS: np.array([9.0, -1.0, 0.0], np.float32)}, 8, "negative"),
        (GOOD, 7, "counts exceed num-examples"),
        ({**GOOD, keys.PROTOTYPE_SOFT: np.ones((3, 3), np.float32)}, 8, "probability"),
    ],
)
def test_invalid_prototype_replies_are_rejected_with_a_reason(
    arrays, num_examples, reason, task_identity, small_overrides
) -> None:
    strategy = _strategy(small_overrides)
    requests = _requests(strategy)
    bad = _reply(requests[0], num_examples, **arrays)
    assert reason in (strategy.check_reply(bad) or "")
    assert strategy.check_reply(_reply(requests[1], 8, **GOOD)) is None
    # the round goes on with the valid reply; the bad one is counted by reason
    strategy.aggregate_train(1, [bad, _reply(requests[1], 8, **GOOD)])
    metrics = strategy.round_metrics[1]
    assert metrics["clients_ok"] == 1 and metrics["clients_failed"] == 1
    assert any(reason in key for key in metrics["failure_reasons"])
    np.testing.assert_allclose(
        strategy.round_targets[keys.PROTOTYPES].numpy(), GOOD[keys.PROTOTYPES]
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategy.proto_weight=-1", "strategy.proto_weight"),
        ("strategy.soft_weight=-0.5", "strategy.soft_weight"),
        ("strategy.temperature=0", "strategy.temperature"),
    ],
)
def test_bad_options_are_config_errors(override, key, small_overrides) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _strategy(small_overrides, override)


def test_architectures_with_different_embedding_widths_are_rejected() -> None:
    architectures = "[{name:mlp,hidden:[128,32]},{name:cnn,channels:[16,32],hidden:64}]"
    with pytest.raises(ConfigError, match="embedding width") as error:
        prepare_run(
            compose_config(
                [*DIGITS, "num_clients=2", "model=hetero", f"model.architectures={architectures}"]
            )
        )
    assert "-> 32" in str(error.value) and "-> 64" in str(error.value)


def test_fedproto_on_digits_end_to_end(in_process_run, tmp_path) -> None:
    """Three rounds: no student, federated evaluation of the clients' own models, uplink of
    exactly three arrays per client, and round 1 identical to local-only training (no
    prototypes yet) while later rounds differ (the regularizer is applied)."""
    base = [*DIGITS, "num_clients=3", "num_rounds=3", "strategy.fraction_evaluate=1.0"]
    summary = in_process_run(base, tmp_path / "proto")
    assert summary["status"] == "completed"
    assert summary["final"]["student_accuracy"] is None
    rows = read_metrics(tmp_path / "proto")
    classes, width = 10, 64  # digits; default mlp hidden [128, 64]
    per_client = ArrayRecord(
        {
            keys.PROTOTYPES: Array(np.zeros((classes, width), np.float32)),
            keys.PROTOTYPE_SOFT: Array(np.zeros((classes, classes), np.float32)),
            keys.PROTOTYPE_COUNTS: Array(np.zeros(classes, np.float32)),
        }
    ).count_bytes()
    assert per_client < (classes * width + classes * classes + classes) * 4 + 1024
    for row in rows[1:]:
        assert row["clients_ok"] == 3 and row["clients_failed"] == 0
        assert row["uplink_bytes"] == 3 * per_client
        assert 0.0 <= row["client_accuracy"] <= 1.0
        assert 0.0 <= row["personalized_accuracy_mean"] <= 1.0
        assert row["prototype_classes"] == classes
        assert "ensemble_accuracy" not in row
    assert [r["downlink_bytes"] for r in rows[1:]] == [0, 3 * per_client, 3 * per_client]

    in_process_run([*base, "strategy=local_only"], tmp_path / "local")
    local = read_metrics(tmp_path / "local")
    assert rows[1]["train_loss"] == pytest.approx(local[1]["train_loss"], rel=1e-9)
    assert rows[2]["train_loss"] != pytest.approx(local[2]["train_loss"], rel=1e-6)


def test_fedproto_with_heterogeneous_clients(in_process_run, tmp_path) -> None:
    """model=hetero: mlp hidden [128, 64] and cnn hidden 64 share D = 64; with the soft term."""
    summary = in_process_run(
        [*DIGITS, "model=hetero", "num_clients=4", "num_rounds=2", "strategy.soft_weight=0.5"],
        tmp_path,
    )
    assert summary["status"] == "completed"
    row = read_metrics(tmp_path)[-1]
    assert row["clients_ok"] == 4 and row["prototype_classes"] == 10
