"""Hostile replies against the whole server path (Hypothesis): for every method, every
message type (discovery, train, evaluate) and every way a reply can be broken (missing
keys, wrong types, lists for scalars, NaN, inf, huge and negative values, wrong shapes and
dtypes, unreadable arrays, duplicated nodes, wrong rounds, wrong message types), the server
never raises, every bad reply is rejected with a counted reason, and the good replies of the
same round are still used.

Replies are built as the strategy tests build them (fake Messages, no Ray). The method's
own ``aggregate`` is replaced by a recorder in the property tests, so that each case costs
milliseconds: what is under test is validation and the round's bookkeeping;
:func:`test_each_method_aggregates_the_good_replies_of_a_hostile_round` runs the real
aggregation on a hostile round once per method. Profiles: ``fedkd-fast`` in the fast tier,
``fedkd-full`` (marked slow) in the full suite, both derandomized (tests/conftest.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

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
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkd.wire import keys
from fedkd.wire.payloads import Discovery
from fedkd.wire.payloads.base import MAX_EXAMPLES
from fedkd.wire.payloads.features import FEATURE_LABELS, FEATURE_LOGITS, FEATURES, TEST_FEATURES
from strategies.core import transport
from strategies.core.evaluation import mean_client_accuracy

FAST = settings.get_profile("fedkd-fast")
FULL = settings.get_profile("fedkd-full")

METHODS = (
    *("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold"),
    *("feddf", "fedmd", "dsfl", "fd", "fedet", "fedgkt", "fedproto", "local_only"),
)
PARTITIONS = (0, 1, 2, 3)
NODES = {0: 11, 1: 22, 2: 33, 3: 44}
EXAMPLES = 30  # what every fake client declared at discovery: 10 of each of 3 classes
ROUND = 2

# ---------------------------------------------------------------------------- the server


@dataclass
class Method:
    """One strategy on the small task, its discovery filled in, its aggregate recorded."""

    name: str
    strategy: Any
    aggregated: list[list[int]]


_BUILT: dict[str, Method] = {}


def method(name: str, small_plan) -> Method:
    """The strategy of method ``name`` (built once per test session: a plan costs ~1 s)."""
    if name not in _BUILT:
        extra = ["model.hidden=[4]", "strategy.server_hidden=[8]"] if name == "fedgkt" else []
        strategy = small_plan(f"strategy={name}", "data.proxy_labeled=true", *extra).strategy
        strategy.node_of_partition = dict(NODES)
        strategy.label_histograms = {p: [10, 10, 10] for p in PARTITIONS}
        strategy.federation.examples = {p: EXAMPLES for p in PARTITIONS}
        found = Method(name, strategy, [])

        def record(state, replies):  # the method's aggregation is not under test here
            found.aggregated.append([r.partition_id for r in replies])
            return ArrayRecord()

        strategy.aggregate = record
        _BUILT[name] = found
    return _BUILT[name]


def requests(strategy) -> dict[int, Message]:
    """This round's train messages by partition (the round's metrics row started afresh)."""
    strategy.round_metrics.pop(ROUND, None)
    sent = strategy.configure_train(ROUND, weights(strategy, 0.0), ConfigRecord(), None)
    by_node = {m.metadata.dst_node_id: m for m in sent}
    return {p: by_node[n] for p, n in NODES.items()}


def weights(strategy, fill: float) -> ArrayRecord:
    state = strategy.architecture_model(0).state_dict()
    return ArrayRecord(
        {k: Array(np.full(tuple(v.shape), fill, dtype=v.numpy().dtype)) for k, v in state.items()}
    )


# ---------------------------------------------------------------------------- honest replies


def honest_records(strategy, partition: int) -> dict[str, dict[str, np.ndarray]]:
    """The arrays an honest client of ``partition`` sends, by record, for every payload the
    method asks for (shapes and dtypes of the real client)."""
    rng = np.random.default_rng(partition)
    data = strategy.assets.data
    classes, test_rows = data.num_classes, len(data.test_y)
    rows = len(strategy.current.proxy_indices)
    width = int(
        strategy.payload_options().get("embedding_width")
        or strategy.payload_options().get("feature_width")
        or 0
    )
    labels = np.repeat(np.arange(classes), EXAMPLES // classes)
    by_payload: dict[str, dict[str, np.ndarray]] = {
        "weights": {
            k: v.numpy() + 0.01 for k, v in strategy.architecture_model(0).state_dict().items()
        },
        "proxy-predictions": {
            keys.PROXY_PROBS: rng.dirichlet(np.ones(classes), size=rows).astype(np.float32)
        },
        "test-predictions": {
            keys.TEST_PROBS: rng.dirichlet(np.ones(classes), size=test_rows).astype(np.float32)
        },
        "label-logits": {
            keys.LABEL_LOGITS: rng.normal(size=(classes, classes)).astype(np.float32),
            keys.LABEL_COUNTS: np.bincount(labels, minlength=classes).astype(np.float32),
        },
        "prototypes": {
            keys.PROTOTYPES: rng.normal(size=(classes, width)).astype(np.float32),
            keys.PROTOTYPE_SOFT: rng.dirichlet(np.ones(classes), size=classes).astype(np.float32),
            keys.PROTOTYPE_COUNTS: np.bincount(labels, minlength=classes).astype(np.float32),
        },
        "features": {
            FEATURES: rng.normal(size=(EXAMPLES, width)).astype(np.float32),
            FEATURE_LOGITS: rng.normal(size=(EXAMPLES, classes)).astype(np.float32),
            FEATURE_LABELS: labels.astype(np.int64),
        },
        "test-features": {TEST_FEATURES: rng.normal(size=(test_rows, width)).astype(np.float32)},
        "control": {
            keys.CONTROL_DELTA: rng.normal(
                size=sum(p.numel() for p in strategy.architecture_model(0).parameters())
            ).astype(np.float32)
        },
    }
    records: dict[str, dict[str, np.ndarray]] = {}
    for payload in strategy.wire_payloads():
        if payload.name in by_payload:
            records.setdefault(payload.record, {}).update(by_payload[payload.name])
    return records


def honest_metrics(request: Message) -> dict[str, Any]:
    return {
        keys.NUM_EXAMPLES: EXAMPLES,
        keys.TRAIN_LOSS: 0.5,
        keys.LOCAL_ACCURACY: 0.75,
        keys.SERVER_ROUND: request.content.config_records[keys.CONFIG][keys.SERVER_ROUND],
    }


def as_message(request: Message, metrics: dict[str, Any], records: dict[str, Any]) -> Message:
    content = RecordDict({keys.METRICS: MetricRecord(metrics)})
    for name, arrays in records.items():
        content[name] = ArrayRecord(
            {
                k: v if isinstance(v, Array) else Array(np.ascontiguousarray(v))
                for k, v in arrays.items()
            }
        )
    return Message(content, reply_to=request)


# ---------------------------------------------------------------------------- hostile replies

NOT_AN_INT = st.one_of(
    st.just(float("nan")),
    st.just(float("inf")),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v)),
    st.lists(st.integers(-5, 100), min_size=0, max_size=3),
    st.lists(st.floats(allow_nan=True), min_size=1, max_size=3),
)
#: Per metric key: values that make a reply unusable (each one must be rejected).
BAD_METRICS = {
    keys.NUM_EXAMPLES: st.one_of(
        NOT_AN_INT, st.integers(max_value=0), st.integers(EXAMPLES + 1, 2**62), st.just(None)
    ),
    keys.SERVER_ROUND: st.one_of(
        NOT_AN_INT, st.integers(-(2**62), 2**62).filter(lambda r: r != ROUND), st.just(None)
    ),
    keys.TRAIN_LOSS: st.one_of(
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, 1e10]),
        st.floats(max_value=-1e-9, allow_infinity=False),
        st.lists(st.floats(0, 1), min_size=1, max_size=3),
    ),
    keys.LOCAL_ACCURACY: st.one_of(
        st.sampled_from([float("nan"), float("inf"), 7.5]),
        st.floats(min_value=1.0001, allow_nan=False),
        st.floats(max_value=-1e-9, allow_nan=False),
        st.integers(2, 2**40),
        st.lists(st.floats(0, 1), min_size=1, max_size=2),
    ),
    keys.DP_EPSILON: st.one_of(
        st.sampled_from([float("nan"), float("inf")]),
        st.floats(max_value=-1e-9, allow_nan=False),
        st.lists(st.floats(0, 10), min_size=1, max_size=2),
    ),
}


def garbage_array(draw: st.DrawFn) -> Array:
    """An Array whose bytes do not deserialize, or another serialization type."""
    data = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        return Array("float32", (len(data) // 4,), "torch.raw", data)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3, np.float32))
    cut = buffer.getvalue()[: draw(st.integers(0, 60))]
    return Array("float32", (3,), "numpy.ndarray", draw(st.sampled_from([data, cut])))


def bad_value(name: str, values: np.ndarray, draw: st.DrawFn) -> float:
    """A value that breaks array ``name`` wherever it lands (beyond every check's bound)."""
    if name in (keys.LABEL_COUNTS, keys.PROTOTYPE_COUNTS):
        return draw(st.sampled_from([-1.0, 0.5, 1e9, 1e30, np.nan, np.inf]))
    if name in (keys.PROXY_PROBS, keys.PROTOTYPE_SOFT):
        return draw(st.sampled_from([-0.5, 2.0, 1e30, -1e30, np.nan, -np.inf]))
    return draw(st.sampled_from([1e5, -1e5, 1e30, -3e38, np.nan, np.inf, -np.inf]))


@st.composite
def broken_arrays(draw: st.DrawFn, records: dict[str, dict[str, np.ndarray]], required: set[str]):
    """``records`` with one array of a required payload broken (or its whole record gone)."""
    names = sorted((r, k) for r, arrays in records.items() if r in required for k in arrays)
    record, name = draw(st.sampled_from(names))
    out = {r: dict(arrays) for r, arrays in records.items()}
    values = out[record][name]
    how = draw(
        st.sampled_from(
            ["missing", "record missing", "unreadable", "dtype", "shape", "value", "scalar"]
        )
    )
    if how == "missing":
        del out[record][name]
    elif how == "record missing":
        del out[record]
    elif how == "unreadable":
        out[record][name] = garbage_array(draw)
    elif how == "dtype":
        wrong = [t for t in ("int8", "int32", "int64", "uint8", "bool") if t != values.dtype.name]
        if values.dtype.kind in "iu":
            wrong = ["float16", "float32", "float64", "bool"]
        elif record == keys.ARRAYS:  # weights: exactly the model's dtype
            wrong += [t for t in ("float16", "float64") if t != values.dtype.name]
        out[record][name] = np.nan_to_num(values).astype(draw(st.sampled_from(wrong)))
    elif how == "shape":
        side = st.integers(0, 5)
        shape = tuple(draw(st.lists(side, min_size=0, max_size=3)))
        if shape == values.shape or (name == FEATURE_LABELS and len(shape) == 1):
            shape = (*values.shape, 1)  # feature-labels of another length still mismatch
        out[record][name] = np.zeros(shape, dtype=values.dtype)
    elif how == "scalar":  # a 0-d array for a vector or matrix
        out[record][name] = np.asarray(values.reshape(-1)[0] if values.size else 0, values.dtype)
    else:
        broken = values.copy()
        flat = broken.reshape(-1)
        index = draw(st.integers(0, flat.size - 1))
        if values.dtype.kind in "iu":  # labels: outside the classes
            flat[index] = draw(st.sampled_from([-1, 3, 2**40]))
        else:
            with np.errstate(over="ignore"):
                flat[index] = bad_value(name, values, draw)
        out[record][name] = broken
    return out


@st.composite
def bad_reply(draw: st.DrawFn, strategy, request: Message, partition: int) -> Message:
    """One way or another, a reply the server must reject."""
    metrics = honest_metrics(request)
    records = honest_records(strategy, partition)
    required = {p.record for p in strategy.wire_payloads() if p.required} - {keys.METRICS}
    kinds = ["metric", "error", "not sampled", "message type", "no metrics"]
    kinds += ["arrays"] * 3 if required else []
    kind = draw(st.sampled_from(kinds))
    if kind == "error":
        reason = draw(st.text(max_size=80))
        return Message(Error(code=draw(st.integers(0, 10)), reason=reason), reply_to=request)
    if kind == "not sampled":
        other = Message(RecordDict(), dst_node_id=999, message_type=MessageType.TRAIN)
        return as_message(other, metrics, records)
    if kind == "message type":
        kind_of = draw(st.sampled_from([MessageType.EVALUATE, MessageType.QUERY]))
        other = Message(
            RecordDict(), dst_node_id=request.metadata.dst_node_id, message_type=kind_of
        )
        return as_message(other, metrics, records)
    if kind == "no metrics":
        message = as_message(request, metrics, records)
        del message.content[keys.METRICS]
        return message
    if kind == "arrays":
        return as_message(request, metrics, draw(broken_arrays(records, required)))
    key = draw(st.sampled_from(sorted(BAD_METRICS)))
    value = draw(BAD_METRICS[key])
    if value is None:
        del metrics[key]
    else:
        metrics[key] = value
    try:
        return as_message(request, metrics, records)
    except TypeError:  # a value MetricRecord refuses cannot be sent: drop the key instead
        del metrics[key]
        if key in (keys.NUM_EXAMPLES, keys.SERVER_ROUND):
            return as_message(request, metrics, records)
        metrics[key] = float("nan")
        return as_message(request, metrics, records)


@st.composite
def hostile_round(draw: st.DrawFn, strategy) -> tuple[list[Message], set[int], int]:
    """A round's replies: some partitions honest, the others broken, maybe a duplicate of
    an honest reply; returns the replies (shuffled), the honest partitions and the number
    of replies that must be rejected."""
    sent = requests(strategy)
    hostile = draw(st.sets(st.sampled_from(PARTITIONS), max_size=3))
    replies, honest = [], set()
    for p in PARTITIONS:
        if p in hostile:
            replies.append(draw(bad_reply(strategy, sent[p], p)))
        else:
            replies.append(
                as_message(sent[p], honest_metrics(sent[p]), honest_records(strategy, p))
            )
            honest.add(p)
    rejected = len(hostile)
    duplicate = None
    if honest and draw(st.booleans()):  # the same node again: only its first reply counts
        again = draw(st.sampled_from(sorted(honest)))
        original = replies[again]
        duplicate = as_message(sent[again], honest_metrics(sent[again]), {})
        replies.append(duplicate)
        rejected += 1
    order = draw(st.permutations(range(len(replies))))
    replies = [replies[i] for i in order]
    if duplicate is not None:  # the first of the two to arrive counts: keep the original first
        i, j = replies.index(original), replies.index(duplicate)
        if j < i:
            replies[i], replies[j] = replies[j], replies[i]
    return replies, honest, rejected


def check_round(strategy, found: Method, replies, honest, rejected) -> None:
    found.aggregated.clear()
    strategy.aggregate_train(ROUND, replies)  # never raises
    metrics = strategy.round_metrics[ROUND]
    assert metrics["clients_failed"] == rejected
    reasons = metrics.get("failure_reasons", {})
    assert sum(reasons.values()) == rejected
    assert all(isinstance(reason, str) and reason for reason in reasons)
    assert metrics["clients_ok"] == len(honest)
    if len(honest) >= strategy.min_train_replies:
        assert found.aggregated == [sorted(honest)]  # the good replies, in partition order


def fuzz_method(name: str, small_plan, data) -> None:
    found = method(name, small_plan)
    strategy = found.strategy
    replies, honest, rejected = data.draw(hostile_round(strategy))
    check_round(strategy, found, replies, honest, rejected)


@pytest.mark.parametrize("name", METHODS)
@settings(FAST)
@given(data=st.data())
def test_hostile_train_replies_fast(name, task_identity, small_plan, data) -> None:
    fuzz_method(name, small_plan, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
@settings(FULL)
@given(data=st.data())
def test_hostile_train_replies_full(name, task_identity, small_plan, data) -> None:
    fuzz_method(name, small_plan, data)


def real_method(name: str, small_plan) -> Any:
    """A fresh strategy of method ``name`` whose own aggregation runs (not recorded)."""
    extra = ["model.hidden=[4]", "strategy.server_hidden=[8]"] if name == "fedgkt" else []
    strategy = small_plan(f"strategy={name}", "data.proxy_labeled=true", *extra).strategy
    strategy.node_of_partition = dict(NODES)
    strategy.label_histograms = {p: [10, 10, 10] for p in PARTITIONS}
    strategy.federation.examples = {p: EXAMPLES for p in PARTITIONS}
    return strategy


def finite_record(record: ArrayRecord | None) -> bool:
    return record is None or all(
        np.isfinite(array.numpy()).all() for array in record.values() if array.numpy().size
    )


@pytest.mark.parametrize("name", METHODS)
@settings(FAST, max_examples=2)
@given(data=st.data())
def test_each_method_aggregates_the_good_replies_of_a_hostile_round(
    name, task_identity, small_plan, data
) -> None:
    """The method's own aggregation on a hostile round: it never raises, counts the bad
    replies, uses the good ones, and what it carries to the next round is finite."""
    strategy = real_method(name, small_plan)
    replies, honest, rejected = data.draw(hostile_round(strategy))
    arrays, _ = strategy.aggregate_train(ROUND, replies)
    metrics = strategy.round_metrics[ROUND]
    assert metrics["clients_failed"] == rejected
    assert metrics["clients_ok"] == len(honest)
    if len(honest) < strategy.min_train_replies:
        assert arrays is None and "skipped" in metrics
        return
    assert "skipped" not in metrics
    assert finite_record(arrays)
    assert finite_record(strategy.round_targets)
    if strategy.has_student:
        student = strategy.assets.student.state_dict().values()
        assert all(torch.isfinite(v).all() for v in student)


def test_centralized_ignores_any_reply(task_identity, small_plan) -> None:
    """No client takes part in ``centralized``: replies, hostile or not, are never read."""
    strategy = small_plan("strategy=centralized").strategy
    assert list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), None)) == []
    stray = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    replies = [
        Message(
            RecordDict({keys.METRICS: MetricRecord({keys.TRAIN_LOSS: float("nan")})}),
            reply_to=stray,
        ),
        Message(Error(code=1, reason="x"), reply_to=stray),
    ]
    strategy.aggregate_train(1, replies)
    assert strategy.round_metrics[1]["clients_ok"] == 0


# ---------------------------------------------------------------------------- discovery

DISCOVERY_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.lists(st.integers(-5, 2**62), max_size=5),
    st.lists(st.floats(), min_size=1, max_size=4),
)


@st.composite
def discovery_answer(draw: st.DrawFn, partition: int) -> tuple[RecordDict, bool]:
    """A discovery answer and whether it is the honest one (else anything at all)."""
    honest = {
        keys.PARTITION_ID: partition,
        keys.NUM_EXAMPLES: EXAMPLES,
        keys.LABEL_HISTOGRAM: [10, 10, 10],
        keys.ARCHITECTURE: 0,
    }
    if draw(st.booleans()):
        return RecordDict({keys.METRICS: MetricRecord(honest)}), True
    values = dict(honest)
    for key in draw(st.sets(st.sampled_from(sorted(honest)), min_size=1)):
        values[key] = draw(DISCOVERY_VALUES)
    values = {k: v for k, v in values.items() if v is not None}
    try:
        record = MetricRecord(values)
    except TypeError:  # not sendable through Flower: drop what it refuses
        record = MetricRecord({})
    return RecordDict({keys.METRICS: record}), values == honest


class DiscoveryGrid:
    """A grid whose nodes answer the discovery query with the given contents."""

    def __init__(self, answers: dict[int, RecordDict | None]) -> None:
        self.answers = answers

    def get_node_ids(self) -> list[int]:
        return sorted(self.answers)

    def send_and_receive(self, messages, timeout=None):
        for message in messages:
            content = self.answers[message.metadata.dst_node_id]
            if content is None:
                yield Message(Error(code=2, reason="boom"), reply_to=message)
            else:
                yield Message(content, reply_to=message)


def fuzz_discovery(data) -> None:
    answers, honest = {}, set()
    for p in PARTITIONS:
        if data.draw(st.integers(0, 9)) == 0:
            answers[NODES[p]] = None  # an error reply
            continue
        content, is_honest = data.draw(discovery_answer(p))
        answers[NODES[p]] = content
        honest |= {p} if is_honest else set()
    federation = transport.Federation()
    try:
        transport.discover(
            DiscoveryGrid(answers),
            federation,
            setup_json="{}",
            expected=len(PARTITIONS),
            num_classes=3,
            num_architectures=1,
            timeout=1.0,
        )
    except RuntimeError as error:  # nobody usable: the run stops with this one error
        assert "no node answered" in str(error) and not honest
        return
    assert honest <= set(federation.node_of_partition)
    for p in federation.node_of_partition:  # whatever was kept is well-formed and consistent
        histogram = federation.label_histograms[p]
        assert len(histogram) == 3 and all(isinstance(c, int) and c >= 0 for c in histogram)
        assert sum(histogram) == federation.examples[p] <= MAX_EXAMPLES
        assert federation.architecture_of[p] == 0


@settings(FAST)
@given(data=st.data())
def test_hostile_discovery_answers_fast(task_identity, data) -> None:
    fuzz_discovery(data)


@pytest.mark.slow
@settings(FULL)
@given(data=st.data())
def test_hostile_discovery_answers_full(task_identity, data) -> None:
    fuzz_discovery(data)


def test_discovery_answers_must_sum_to_their_count() -> None:
    """Regression: a histogram that does not sum to the declared count was accepted (the
    count was replaced by the sum, or ignored); now it is refused naming both."""
    answer = MetricRecord(
        {keys.PARTITION_ID: 0, keys.NUM_EXAMPLES: 10**6, keys.LABEL_HISTOGRAM: [10, 10, 10]}
    )
    with pytest.raises(ValueError, match=r"exceed|fall short"):
        Discovery.decode(RecordDict({keys.METRICS: answer}), num_classes=3)


# ---------------------------------------------------------------------------- evaluate

BAD_EVALUATION = {
    keys.ACCURACY: st.one_of(
        st.none(),
        st.sampled_from([float("nan"), float("inf"), -0.1, 1.5, 7]),
        st.lists(st.floats(0, 1), min_size=1, max_size=2),
    ),
    keys.NUM_EXAMPLES: st.one_of(
        st.none(),
        st.floats(allow_nan=True).filter(lambda v: v != int(v) if np.isfinite(v) else True),
        st.integers(max_value=-1),
        st.integers(MAX_EXAMPLES + 1, 2**63 - 1),
        st.lists(st.integers(0, 10), min_size=1, max_size=2),
    ),
}


def fuzz_evaluate(small_plan, data) -> None:
    strategy = method("fedavg", small_plan).strategy
    good, bad, asked = [], [], []
    accuracies = {}
    for p in PARTITIONS:
        request = Message(RecordDict(), dst_node_id=NODES[p], message_type=MessageType.EVALUATE)
        metrics = {keys.ACCURACY: 0.25 * p, keys.NUM_EXAMPLES: 10 + p, keys.LOSS: 0.1}
        if data.draw(st.booleans()):
            good.append(
                Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=request)
            )
            accuracies[p] = metrics
            asked.append(request)
            continue
        kind = data.draw(st.sampled_from(["value", "error", "type", "no metrics"]))
        if kind == "value":
            key = data.draw(st.sampled_from(sorted(BAD_EVALUATION)))
            value = data.draw(BAD_EVALUATION[key])
            metrics = {k: v for k, v in {**metrics, key: value}.items() if v is not None}
            bad.append(Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=request))
        elif kind == "error":
            bad.append(Message(Error(code=3, reason="x"), reply_to=request))
        elif kind == "type":
            train = Message(RecordDict(), dst_node_id=NODES[p], message_type=MessageType.TRAIN)
            bad.append(Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=train))
        else:
            bad.append(Message(RecordDict(), reply_to=request))
    duplicates = [  # the same node again, claiming a huge test set: only its first counts
        Message(
            RecordDict(
                {keys.METRICS: MetricRecord({keys.ACCURACY: 0.0, keys.NUM_EXAMPLES: 10**6})}
            ),
            reply_to=request,
        )
        for request in asked
        if data.draw(st.booleans())
    ]
    replies = data.draw(st.permutations(good + bad)) + duplicates  # duplicates arrive last
    strategy.round_metrics.pop(ROUND, None)
    result = strategy.aggregate_evaluate(ROUND, replies)  # never raises
    if not accuracies:
        assert result is None
        return
    total = sum(m[keys.NUM_EXAMPLES] for m in accuracies.values())
    expected = sum(m[keys.ACCURACY] * m[keys.NUM_EXAMPLES] for m in accuracies.values()) / total
    assert strategy.round_metrics[ROUND]["client_accuracy"] == pytest.approx(expected)
    assert mean_client_accuracy(bad) is None


@settings(FAST)
@given(data=st.data())
def test_hostile_evaluation_replies_fast(task_identity, small_plan, data) -> None:
    fuzz_evaluate(small_plan, data)


@pytest.mark.slow
@settings(FULL)
@given(data=st.data())
def test_hostile_evaluation_replies_full(task_identity, small_plan, data) -> None:
    fuzz_evaluate(small_plan, data)
