"""Federated evaluation: the global model on clients' local test splits (``evaluate``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedkd.wire import keys


def evaluate_messages(
    partitions: Sequence[int],
    node_of_partition: dict[int, int],
    *,
    config: ConfigRecord,
    arrays: ArrayRecord | None,
) -> list[Message]:
    """One ``evaluate`` message per partition (the same content: the global weights when
    the method sends them)."""
    content = RecordDict({keys.CONFIG: config})
    if arrays is not None:
        content[keys.ARRAYS] = arrays
    return [
        Message(
            content=content, message_type=MessageType.EVALUATE, dst_node_id=node_of_partition[p]
        )
        for p in partitions
    ]


def mean_client_accuracy(replies: Iterable[Message]) -> float | None:
    """Example-weighted mean of the replies' local test accuracy (None: no usable reply)."""
    ok = [r for r in replies if not r.has_error() and keys.METRICS in r.content.metric_records]
    counted = [r for r in ok if num_examples(r) > 0]
    if not counted:
        return None
    total = sum(num_examples(r) for r in counted)
    return sum(_metric(r, keys.ACCURACY) * num_examples(r) for r in counted) / total


def _metric(reply: Message, key: str) -> float:
    value = reply.content.metric_records[keys.METRICS][key]
    if not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} is not a number")
    return float(value)


def num_examples(reply: Message) -> int:
    """The example count an evaluation reply reports."""
    return int(_metric(reply, keys.NUM_EXAMPLES))
