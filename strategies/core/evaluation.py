"""Federated evaluation: the global model on clients' local test splits (``evaluate``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedkd.wire import keys
from fedkd.wire.payloads.base import MAX_EXAMPLES


def evaluate_messages(
    partitions: Sequence[int],
    node_of_partition: dict[int, int],
    *,
    config: dict[str, Any],
    keep_model: bool,
    arrays_for: Callable[[int], ArrayRecord] | None,
) -> tuple[list[Message], int]:
    """One ``evaluate`` message per partition (the round ``config`` plus ``keep-model``, and,
    when the method sends weights, ``arrays_for(partition)``: the global model of that
    client's architecture), and the bytes of the weights they carry."""
    record = ConfigRecord({**config, keys.KEEP_MODEL: keep_model})
    messages, sent_bytes = [], 0
    for partition in partitions:
        content = RecordDict({keys.CONFIG: record})
        if arrays_for is not None:
            arrays = arrays_for(partition)
            content[keys.ARRAYS] = arrays
            sent_bytes += arrays.count_bytes()
        messages.append(
            Message(
                content=content,
                message_type=MessageType.EVALUATE,
                dst_node_id=node_of_partition[partition],
            )
        )
    return messages, sent_bytes


def mean_client_accuracy(replies: Iterable[Message]) -> float | None:
    """Example-weighted mean of the replies' local test accuracy (None: no usable reply).

    An evaluation reply is used when it is the first from its node, answers an
    ``evaluate`` message, and carries an accuracy in [0, 1] with an integral example count
    (:func:`_usable`); any other is left out, never raised on."""
    ok, seen = [], set()
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error() or node in seen:
            continue
        seen.add(node)
        if (
            reply.metadata.message_type == MessageType.EVALUATE
            and keys.METRICS in reply.content.metric_records
        ):
            ok.append(reply)
    reported = [r for r in ok if _usable(r)]  # withheld under privacy, or malformed
    counted = [r for r in reported if num_examples(r) > 0]
    if not counted:
        return None
    total = sum(num_examples(r) for r in counted)
    return sum(_metric(r, keys.ACCURACY) * num_examples(r) for r in counted) / total


def _usable(reply: Message) -> bool:
    """An evaluation reply with an accuracy in [0, 1] and an integral example count."""
    metrics = reply.content.metric_records[keys.METRICS]
    accuracy, count = metrics.get(keys.ACCURACY), metrics.get(keys.NUM_EXAMPLES)
    return (
        isinstance(accuracy, int | float)
        and not isinstance(accuracy, bool)
        and 0.0 <= accuracy <= 1.0
        and isinstance(count, int)
        and not isinstance(count, bool)
        and 0 <= count <= MAX_EXAMPLES
    )


def _metric(reply: Message, key: str) -> float:
    value = reply.content.metric_records[keys.METRICS][key]
    if not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} is not a number")
    return float(value)


def num_examples(reply: Message) -> int:
    """The example count an evaluation reply reports."""
    return int(_metric(reply, keys.NUM_EXAMPLES))
