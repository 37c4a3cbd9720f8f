"""The payload layer on hand-built replies: each payload's checks and decoding, the
registry's order, byte counts that add up to Flower's, and discovery answers."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedkd.errors import ConfigError
from fedkd.wire import keys
from fedkd.wire.encoding import EncodingSpec
from fedkd.wire.payloads import (
    PAYLOADS,
    ClientMetrics,
    Discovery,
    Expectation,
    LabelLogits,
    ProxyPredictions,
    TestPredictions,
    resolve,
)

C = 3


def _content(record: str = keys.PREDICTIONS, **arrays: np.ndarray) -> RecordDict:
    return RecordDict({record: ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})})


def _label_logits(**changes: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {
        keys.LABEL_LOGITS: np.arange(C * C, dtype=np.float32).reshape(C, C),
        keys.LABEL_COUNTS: np.array([4.0, 0.0, 6.0], dtype=np.float32),
    }
    arrays.update(changes)
    return arrays


def test_label_logits_valid_reply_decodes_to_float64() -> None:
    expect = Expectation(num_classes=C, num_examples=10)
    content = _content(**_label_logits())
    assert LabelLogits().validate(content, expect) is None
    logits, counts = LabelLogits().decode(content, expect)
    assert logits.dtype == counts.dtype == np.float64
    np.testing.assert_array_equal(counts, [4.0, 0.0, 6.0])


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({keys.LABEL_LOGITS: np.zeros((C, C), np.float32)}, "missing label logits"),
        (_label_logits(**{keys.LABEL_LOGITS: np.zeros((C, C + 1), np.float32)}), "wrong shape"),
        (_label_logits(**{keys.LABEL_COUNTS: np.array([4, 0, 6])}), "wrong dtype"),
        (_label_logits(**{keys.LABEL_COUNTS: np.array([4.0, -1.0, 6.0], np.float32)}), "negative"),
        (_label_logits(**{keys.LABEL_LOGITS: np.full((C, C), np.inf, np.float32)}), "not finite"),
        (_label_logits(**{keys.LABEL_LOGITS: np.full((C, C), 2e4, np.float32)}), "magnitude"),
        # counts claiming more examples than the reply reports would buy weight in G
        (_label_logits(**{keys.LABEL_COUNTS: np.array([4.0, 0.0, 7.0], np.float32)}), "exceed"),
    ],
)
def test_label_logits_unusable_replies_name_the_problem(arrays, reason: str) -> None:
    found = LabelLogits().validate(_content(**arrays), Expectation(num_classes=C, num_examples=10))
    assert found is not None and reason in found


def test_client_metrics_cap_the_example_count_at_what_discovery_declared() -> None:
    def content(n: int, round_: int = 2, **extra) -> RecordDict:
        values = {keys.NUM_EXAMPLES: n, keys.SERVER_ROUND: round_, keys.TRAIN_LOSS: 0.5}
        record = MetricRecord({**values, **extra})
        return RecordDict({keys.METRICS: record})

    expect = Expectation(num_classes=C, server_round=2, declared_examples=30)
    assert ClientMetrics().validate(content(30), expect) is None
    assert ClientMetrics().validate(content(31), expect) == "implausible num-examples"
    assert ClientMetrics().validate(content(0), expect) == "implausible num-examples"
    assert ClientMetrics().validate(content(30, 1), expect) == "reply for another round"
    assert ClientMetrics().validate(RecordDict(), expect) == "missing metrics"
    # a loss or accuracy that is not a number would crash the bookkeeping: a reason instead
    # (an absent loss is fine: privacy mechanisms withhold it)
    no_loss = RecordDict({keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5, keys.SERVER_ROUND: 2})})
    assert ClientMetrics().validate(no_loss, expect) is None
    listed = content(5, **{keys.TRAIN_LOSS: [0.1, 0.2]})
    assert ClientMetrics().validate(listed, expect) == "train-loss: missing or not a number"
    accuracy = content(5, **{keys.LOCAL_ACCURACY: [1.0]})
    assert ClientMetrics().validate(accuracy, expect) == "local-accuracy: missing or not a number"
    # losses finite and non-negative, accuracies in [0, 1], epsilons finite (issue 18)
    for key, bad in (
        (keys.TRAIN_LOSS, float("nan")),
        (keys.TRAIN_LOSS, float("inf")),
        (keys.TRAIN_LOSS, 1e308 * 10),
        (keys.TRAIN_LOSS, -0.5),
        (keys.LOCAL_ACCURACY, 7.5),
        (keys.LOCAL_ACCURACY, -0.1),
        (keys.DP_EPSILON, float("nan")),
    ):
        reason = ClientMetrics().validate(content(5, **{key: bad}), expect)
        assert reason is not None and reason.startswith(f"{key}: out of range"), (key, bad)
    assert ClientMetrics().validate(content(5, **{keys.LOCAL_ACCURACY: 1.0}), expect) is None


@pytest.mark.parametrize("name", ["float32", "float16", "int8", "topk"])
def test_proxy_predictions_bytes_add_up_to_flowers_count(name: str) -> None:
    """A payload's bytes are its share of ``ArrayRecord.count_bytes``: with a second payload
    in the same record, the two shares sum to the record's count."""
    spec = EncodingSpec.from_config({"name": name, "k": 2})
    rows = np.random.default_rng(0).dirichlet(np.ones(C), size=5).astype(np.float32)
    arrays = {**spec.encode(rows), **_label_logits()}
    content = _content(**arrays)
    record_bytes = content.array_records[keys.PREDICTIONS].count_bytes()
    shares = ProxyPredictions().uplink_bytes(content) + LabelLogits().uplink_bytes(content)
    assert shares == record_bytes
    expect = Expectation(num_classes=C, proxy_rows=5, encoding=spec)
    assert ProxyPredictions().validate(content, expect) is None
    decoded = ProxyPredictions().decode(content, expect)
    np.testing.assert_allclose(decoded.sum(axis=1), 1.0, atol=1e-6)  # renormalized rows


def test_test_predictions_are_optional_and_never_uplink() -> None:
    probs = np.full((4, C), 1 / C, dtype=np.float32)
    content = _content(keys.EVALUATION, **{keys.TEST_PROBS: probs})
    expect = Expectation(num_classes=C, test_rows=4)
    payload = TestPredictions()
    assert not payload.required and payload.uplink_bytes(content) == 0
    assert payload.validate(content, expect) is None
    bad = _content(keys.EVALUATION, **{keys.TEST_PROBS: probs * 2})
    assert "not probability vectors" in payload.validate(bad, expect)


def test_the_registry_orders_payloads_and_refuses_unknown_names() -> None:
    names = [p.name for p in resolve(PAYLOADS)]
    assert names[:5] == [
        "client-metrics",
        "weights",
        "proxy-predictions",
        "label-logits",
        "prototypes",
    ]
    assert names.index("features") < names.index("test-predictions")
    assert [p.name for p in resolve(["test-predictions", "weights"])] == [
        "weights",
        "test-predictions",
    ]
    with pytest.raises(ConfigError, match=r"unknown payloads \['nope'\]"):
        resolve(["weights", "nope"])
    assert {p.name for p in resolve(PAYLOADS) if p.from_private_records} == {
        "label-logits",
        "prototypes",
        "features",
    }


def test_discovery_round_trips_and_rejects_unusable_answers() -> None:
    record = Discovery.compute(
        partition_id=3, train_y=np.array([0, 2, 2, 1]), num_classes=C, architecture=1
    )
    found = Discovery.decode(RecordDict({keys.METRICS: record}), num_classes=C)
    assert found == Discovery(
        partition_id=3, num_examples=4, label_histogram=(1, 1, 2), architecture=1
    )
    with pytest.raises(ValueError, match="missing metrics"):
        Discovery.decode(RecordDict())
    no_partition = MetricRecord({keys.LABEL_HISTOGRAM: [1, 2, 3]})
    with pytest.raises(ValueError, match="partition-id"):
        Discovery.decode(RecordDict({keys.METRICS: no_partition}))
    negative = MetricRecord({keys.PARTITION_ID: 0, keys.LABEL_HISTOGRAM: [1, -2, 3]})
    with pytest.raises(ValueError, match="negative"):
        Discovery.decode(RecordDict({keys.METRICS: negative}))
    with pytest.raises(ValueError, match="classes"):
        Discovery.decode(RecordDict({keys.METRICS: record}), num_classes=C + 1)
    # values that would crash the server later (an unknown architecture indexes the run's
    # models; a float count cannot become an int) are refused here, naming the problem
    with pytest.raises(ValueError, match="architecture"):
        Discovery.decode(RecordDict({keys.METRICS: record}), num_architectures=1)
    listed = MetricRecord({keys.PARTITION_ID: 0, keys.LABEL_HISTOGRAM: [1], keys.ARCHITECTURE: [0]})
    with pytest.raises(ValueError, match="architecture"):
        Discovery.decode(RecordDict({keys.METRICS: listed}))
    infinite = MetricRecord({keys.PARTITION_ID: 0, keys.LABEL_HISTOGRAM: [1.0, float("inf")]})
    with pytest.raises(ValueError, match="integer counts"):
        Discovery.decode(RecordDict({keys.METRICS: infinite}))
    with pytest.raises(ValueError, match="outside"):
        Discovery.decode(RecordDict({keys.METRICS: record}), num_partitions=3)


def test_discovery_needs_the_histogram_unless_a_mechanism_withholds_it() -> None:
    """A hostile answer without a histogram cannot leave the server a ragged set of
    histograms (a label-aware rule would then raise); under a mechanism the count alone
    is the answer."""
    alone = RecordDict({keys.METRICS: MetricRecord({keys.PARTITION_ID: 0, keys.NUM_EXAMPLES: 64})})
    with pytest.raises(ValueError, match="missing label-histogram"):
        Discovery.decode(alone, num_classes=C)
    found = Discovery.decode(alone, num_classes=C, require_histogram=False)
    assert (found.num_examples, found.label_histogram) == (64, ())
