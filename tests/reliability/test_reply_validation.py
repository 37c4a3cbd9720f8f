"""Every invalid-reply kind is rejected with its own counted reason, and client failures
reach the server as generic reasons without client data."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedkd.apps.client import app as client_app
from fedkd.apps.client import safe_reason
from fedkd.errors import ConfigError
from fedkd.reliability.faults import InjectedFault
from fedkd.wire import keys
from strategies.base import RoundAborted


def _strategy(small_plan, *extra: str):  # needs the task_identity fixture
    strategy = small_plan(*extra).strategy
    strategy.node_of_partition = {0: 11, 1: 22, 2: 33, 3: 44}
    strategy.label_histograms = {p: [10, 10, 10] for p in range(4)}  # 30 records each
    return strategy


def _weights(strategy, fill: float, dtype=np.float32) -> ArrayRecord:
    return ArrayRecord(
        {
            k: Array(np.full(tuple(v.shape), fill, dtype=dtype))
            for k, v in strategy.assets.student.state_dict().items()
        }
    )


def _reply(request: Message, arrays: ArrayRecord, **metrics) -> Message:
    values = {
        keys.NUM_EXAMPLES: 30,
        keys.TRAIN_LOSS: 0.5,
        keys.SERVER_ROUND: request.content.config_records[keys.CONFIG][keys.SERVER_ROUND],
        **metrics,
    }
    values = {k: v for k, v in values.items() if v is not None}
    content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: MetricRecord(values)})
    return Message(content, reply_to=request)


def _requests(strategy, server_round: int = 2) -> list[Message]:
    return list(
        strategy.configure_train(server_round, _weights(strategy, 0.0), ConfigRecord(), None)
    )


def test_each_invalid_weight_reply_kind_is_counted(task_identity, small_plan) -> None:
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    replies = [
        _reply(requests[0], _weights(strategy, 1.0)),  # the only good one
        _reply(requests[1], _weights(strategy, 1.0), **{keys.SERVER_ROUND: 1}),
        _reply(requests[2], _weights(strategy, 1.0, dtype=np.float64)),
        _reply(requests[3], _weights(strategy, 1e6)),
    ]
    arrays, _ = strategy.aggregate_train(2, replies)
    assert arrays is not None
    for array in arrays.values():
        np.testing.assert_allclose(array.numpy(), 1.0)
    name = next(iter(strategy.assets.student.state_dict()))
    assert strategy.round_metrics[2]["failure_reasons"] == {
        "reply for another round": 1,
        f"weights: wrong dtype for {name}": 1,
        "weights: absurd magnitude": 1,
    }


def test_missing_round_and_inflated_example_counts_are_rejected(task_identity, small_plan) -> None:
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    replies = [
        _reply(requests[0], _weights(strategy, 1.0)),
        _reply(requests[1], _weights(strategy, 1.0), **{keys.SERVER_ROUND: None}),
        _reply(requests[2], _weights(strategy, 1.0), **{keys.NUM_EXAMPLES: 3000}),
        _reply(requests[3], _weights(strategy, 1.0), **{keys.NUM_EXAMPLES: 0}),
    ]
    strategy.aggregate_train(2, replies)
    assert strategy.round_metrics[2]["failure_reasons"] == {
        "missing server-round": 1,
        "implausible num-examples": 2,
    }
    assert strategy.round_metrics[2]["clients_ok"] == 1


def test_invalid_prediction_replies_are_counted(task_identity, small_plan) -> None:
    strategy = _strategy(small_plan, "strategy=dsfl")
    requests = _requests(strategy)
    rows = len(strategy.proxy_indices)
    good = np.full((rows, 3), 1 / 3)

    def reply(request: Message, probs: np.ndarray) -> Message:
        message = _reply(request, ArrayRecord())
        del message.content.array_records[keys.ARRAYS]
        message.content[keys.PREDICTIONS] = ArrayRecord({keys.PROXY_PROBS: Array(probs)})
        return message

    nan = good.copy()
    nan[0, 0] = np.nan
    replies = [
        reply(requests[0], good.astype(np.float32)),
        reply(requests[1], good.astype(np.int64)),  # wrong dtype
        reply(requests[2], nan.astype(np.float32)),
        reply(requests[3], (good * 10).astype(np.float32)),  # the scale attack
    ]
    strategy.aggregate_train(2, replies)
    assert strategy.round_metrics[2]["failure_reasons"] == {
        "proxy-probs: wrong dtype int64": 1,
        "proxy-probs: not finite floats": 1,
        "proxy-probs: rows are not probability vectors": 1,
    }


def test_client_errors_cross_without_their_text(task_identity, small_plan) -> None:
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    secret = "patient 4711 has diagnosis X"
    replies = [
        _reply(requests[0], _weights(strategy, 1.0)),
        # Flower's runtime wraps an exception's text (and traceback) into the reason
        Message(Error(code=2, reason=f"<class 'ValueError'>:<'{secret}'>"), reply_to=requests[1]),
        Message(
            Error(code=2, reason=f"Traceback (most recent call last):\nKeyError: '{secret}'"),
            reply_to=requests[2],
        ),
        Message(
            Error(code=2, reason=safe_reason(InjectedFault("injected crash"))), reply_to=requests[3]
        ),
    ]
    strategy.aggregate_train(2, replies)
    reasons = strategy.round_metrics[2]["failure_reasons"]
    assert reasons == {
        "client error: ValueError": 1,
        "client error: KeyError": 1,
        "client error: InjectedFault: injected crash": 1,
    }
    assert all(secret not in reason for reason in reasons)


def test_client_app_reports_foreign_exceptions_by_type_only(task_identity) -> None:
    """A non-fedkd exception inside the ClientApp becomes an Error reply naming its type."""
    assert (
        safe_reason(ValueError("row 7: 63.2, 1, 0")) == "ValueError (details in the client's log)"
    )
    assert safe_reason(ConfigError("client.lr must be > 0")).startswith("ConfigError: client.lr")
    context = Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 0, "num-partitions": 4},
        state=RecordDict(),
        run_config={},
    )
    broken = Message(
        RecordDict({keys.CONFIG: ConfigRecord({keys.SETUP: "{not json"})}),
        dst_node_id=5,
        message_type=MessageType.TRAIN,
    )
    reply = client_app(broken, context)
    assert reply.has_error()
    assert reply.error.reason == "JSONDecodeError (details in the client's log)"


def test_too_few_replies_abort_when_asked(task_identity, small_plan) -> None:
    strategy = _strategy(
        small_plan,
        "strategy=fedavg",
        "strategy.min_train_replies=2",
        "strategy.on_too_few_replies=abort",
    )
    requests = _requests(strategy)
    replies = [_reply(requests[0], _weights(strategy, 1.0))]
    with pytest.raises(
        RoundAborted, match="round 2 aborted: 1 valid replies < min_train_replies=2"
    ):
        strategy.aggregate_train(2, replies)
    with pytest.raises(ConfigError, match="on_too_few_replies"):
        _strategy(small_plan, "strategy=fedavg", "strategy.on_too_few_replies=retry")


def _with_test_probs(reply: Message, probs: np.ndarray) -> Message:
    reply.content[keys.EVALUATION] = ArrayRecord({keys.TEST_PROBS: Array(probs)})
    return reply


def test_a_second_reply_from_the_same_node_is_dropped(task_identity, small_plan) -> None:
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    replies = [
        _reply(requests[0], _weights(strategy, 1.0)),
        _reply(requests[0], _weights(strategy, 3.0)),  # the same node again
        _reply(requests[1], _weights(strategy, 1.0)),
    ]
    arrays, _ = strategy.aggregate_train(2, replies)
    assert arrays is not None
    for array in arrays.values():  # the second reply never counted
        np.testing.assert_allclose(array.numpy(), 1.0)
    metrics = strategy.round_metrics[2]
    assert metrics["clients_ok"] == 2
    assert metrics["failure_reasons"]["second reply from the same node"] == 1


def test_missing_or_malformed_metrics_reject_the_client_never_the_run(
    task_identity, small_plan
) -> None:
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    replies = [
        _reply(requests[0], _weights(strategy, 1.0), **{keys.TRAIN_LOSS: None}),  # absent: ok
        _reply(requests[1], _weights(strategy, 1.0), **{keys.TRAIN_LOSS: [0.1, 0.2]}),
        _reply(requests[2], _weights(strategy, 1.0), **{keys.LOCAL_ACCURACY: [1.0]}),
        _reply(requests[3], _weights(strategy, 1.0), **{keys.TRAIN_LOSS: float("nan")}),
    ]
    arrays, _ = strategy.aggregate_train(2, replies)
    assert arrays is not None
    metrics = strategy.round_metrics[2]
    assert metrics["clients_ok"] == 1 and "train_loss" not in metrics
    assert metrics["failure_reasons"] == {
        "train-loss: missing or not a number": 1,
        "local-accuracy: missing or not a number": 1,
        "train-loss: out of range (must be [0, 1e+09])": 1,
    }


def test_one_clients_unusable_test_predictions_leave_only_that_client_out(
    task_identity, small_plan
) -> None:
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    labels = strategy.assets.data.test_y
    classes = strategy.assets.data.num_classes
    right = np.eye(classes, dtype=np.float32)[labels]  # every test example right
    wrong = np.eye(classes, dtype=np.float32)[(labels + 1) % classes]
    broken = np.full_like(right, np.nan)
    replies = [
        _with_test_probs(_reply(requests[0], _weights(strategy, 1.0)), right),
        _with_test_probs(_reply(requests[1], _weights(strategy, 1.0)), wrong),
        _with_test_probs(_reply(requests[2], _weights(strategy, 1.0)), broken),
    ]
    strategy.aggregate_train(2, replies)
    metrics = strategy.round_metrics[2]
    assert metrics["clients_ok"] == 3  # test predictions are diagnostics: no rejection
    assert metrics["client_accuracies"] == {0: 1.0, 1: 0.0}
    assert metrics["client_accuracy_mean"] == 0.5


def test_fd_label_counts_must_be_integral_and_within_the_example_count() -> None:
    from fedkd.wire.payloads import Expectation
    from fedkd.wire.payloads.label_logits import LabelLogits

    def content(counts: list[float]) -> RecordDict:
        arrays = {
            keys.LABEL_LOGITS: Array(np.zeros((3, 3), np.float32)),
            keys.LABEL_COUNTS: Array(np.asarray(counts, np.float32)),
        }
        return RecordDict({keys.PREDICTIONS: ArrayRecord(arrays)})

    expect = Expectation(num_classes=3, num_examples=30, server_round=1)
    assert LabelLogits().validate(content([10, 10, 10]), expect) is None
    assert LabelLogits().validate(content([1e30, 0, 0]), expect) == (
        "label logits: counts exceed num-examples"
    )
    assert LabelLogits().validate(content([0.5, 1, 1]), expect) == (
        "label logits: counts not integral"
    )


def test_evaluation_replies_outside_the_schema_are_left_out(task_identity) -> None:
    from strategies.core.evaluation import mean_client_accuracy

    def reply(**metrics) -> Message:
        request = Message(RecordDict(), dst_node_id=1, message_type=MessageType.EVALUATE)
        return Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=request)

    good = reply(**{keys.ACCURACY: 0.8, keys.NUM_EXAMPLES: 10})
    hostile = [
        reply(**{keys.ACCURACY: 7.5, keys.NUM_EXAMPLES: 10}),
        reply(**{keys.ACCURACY: float("nan"), keys.NUM_EXAMPLES: 10}),
        reply(**{keys.ACCURACY: [0.9], keys.NUM_EXAMPLES: 10}),
        reply(**{keys.ACCURACY: 0.9, keys.NUM_EXAMPLES: 1.5}),
        reply(**{keys.NUM_EXAMPLES: 10}),
    ]
    assert mean_client_accuracy([good, *hostile]) == pytest.approx(0.8)
    assert mean_client_accuracy(hostile) is None


# ---------------------------------------------------------------- regressions from fuzzing


def test_unreadable_arrays_reject_the_client_never_the_run(task_identity, small_plan) -> None:
    """Regression: an Array whose bytes do not deserialize (garbage, a truncated .npy,
    another serialization type) made ``Array.numpy()`` raise inside the server's checks."""
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    name = next(iter(strategy.assets.student.state_dict()))

    def garbled(array: Array) -> ArrayRecord:
        record = _weights(strategy, 1.0)
        record[name] = array
        return record

    replies = [
        _reply(requests[0], _weights(strategy, 1.0)),
        _reply(requests[1], garbled(Array("float32", (8, 6), "numpy.ndarray", b"garbage"))),
        _reply(requests[2], garbled(Array("float32", (3,), "torch.raw", b"\x00" * 12))),
    ]
    with_probs = _with_test_probs(_reply(requests[3], _weights(strategy, 1.0)), np.zeros(1))
    with_probs.content[keys.EVALUATION][keys.TEST_PROBS] = Array(
        "float32", (1,), "numpy.ndarray", b""
    )
    strategy.aggregate_train(2, [*replies, with_probs])
    metrics = strategy.round_metrics[2]
    assert metrics["failure_reasons"] == {f"{name}: not a readable array": 2}
    assert metrics["clients_ok"] == 2  # unreadable test predictions only leave diagnostics


def test_a_train_reply_to_another_message_type_is_rejected(task_identity, small_plan) -> None:
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    evaluate = Message(
        RecordDict({keys.CONFIG: requests[1].content.config_records[keys.CONFIG]}),
        dst_node_id=22,
        message_type=MessageType.EVALUATE,
    )
    replies = [
        _reply(requests[0], _weights(strategy, 1.0)),
        _reply(evaluate, _weights(strategy, 1.0)),
    ]
    strategy.aggregate_train(2, replies)
    assert strategy.round_metrics[2]["failure_reasons"]["reply to another message type"] == 1


def test_a_huge_finite_train_loss_cannot_overflow_the_round_mean(task_identity, small_plan) -> None:
    """Regression: ``train-loss`` 1e308 was finite and accepted, and the round's
    example-weighted mean overflowed to inf (written to metrics.jsonl as Infinity)."""
    strategy = _strategy(small_plan, "strategy=fedavg")
    requests = _requests(strategy)
    replies = [
        _reply(requests[0], _weights(strategy, 1.0)),
        _reply(requests[1], _weights(strategy, 1.0), **{keys.TRAIN_LOSS: 1e308}),
    ]
    strategy.aggregate_train(2, replies)
    metrics = strategy.round_metrics[2]
    assert metrics["train_loss"] == 0.5 and metrics["clients_ok"] == 1
    assert metrics["failure_reasons"]["train-loss: out of range (must be [0, 1e+09])"] == 1


def test_int8_predictions_that_overflow_when_decoded_are_rejected() -> None:
    """Regression: int8 rows with a huge finite scale decode to inf; the rounding slack
    computed from them was inf too, so the probability check passed them."""
    from fedkd.wire.encoding import EncodingSpec
    from fedkd.wire.payloads import Expectation, ProxyPredictions

    arrays = {
        keys.PROXY_PROBS_Q: Array(np.array([[127, 0, 0]], np.int8)),
        keys.PROXY_PROBS_SCALE: Array(np.array([3e38], np.float32)),
    }
    content = RecordDict({keys.PREDICTIONS: ArrayRecord(arrays)})
    expect = Expectation(num_classes=3, proxy_rows=1, encoding=EncodingSpec("int8"))
    assert ProxyPredictions().validate(content, expect) == "proxy-probs: not finite after decoding"


def test_local_logit_dp_rows_are_bounded_by_the_clip_plus_the_noise() -> None:
    """Regression: under local logit_dp any finite value was accepted, so one client's 1e30
    owned the noisy mean; now entries beyond the clip plus NOISE_BOUND_STDS stds are refused."""
    from fedkd.privacy import PrivacySpec
    from fedkd.wire.encoding import EncodingSpec
    from fedkd.wire.payloads import Expectation, ProxyPredictions
    from fedkd.wire.payloads.base import Reporting

    spec = PrivacySpec.from_config({"name": "logit_dp", "mode": "local"})
    expect = Expectation(
        num_classes=3, proxy_rows=2, encoding=EncodingSpec(), noisy=True, reporting=Reporting(spec)
    )
    rng = np.random.default_rng(0)
    honest = (1 / 3 + rng.normal(0, 2.0, size=(2, 3))).astype(np.float32)  # std 2 sqrt(2) here

    def content(values: np.ndarray) -> RecordDict:
        return RecordDict({keys.PREDICTIONS: ArrayRecord({keys.PROXY_PROBS: Array(values)})})

    assert ProxyPredictions().validate(content(honest), expect) is None
    huge = honest.copy()
    huge[0, 0] = 1e30
    assert "noise" in (ProxyPredictions().validate(content(huge), expect) or "")


def test_evaluation_replies_count_once_per_node_and_only_as_answers_to_evaluate(
    task_identity,
) -> None:
    """Regression: the same node's second evaluation reply was counted again (here with a
    test set of 10**6 that would own the mean), and so was a reply to a train message."""
    from strategies.core.evaluation import mean_client_accuracy

    evaluate = Message(RecordDict(), dst_node_id=1, message_type=MessageType.EVALUATE)
    train = Message(RecordDict(), dst_node_id=2, message_type=MessageType.TRAIN)

    def reply(request: Message, accuracy: float, count: int) -> Message:
        metrics = MetricRecord({keys.ACCURACY: accuracy, keys.NUM_EXAMPLES: count})
        return Message(RecordDict({keys.METRICS: metrics}), reply_to=request)

    replies = [reply(evaluate, 0.8, 10), reply(evaluate, 0.0, 10**6), reply(train, 0.0, 10**6)]
    assert mean_client_accuracy(replies) == pytest.approx(0.8)
