"""Reply validation driven by the payloads: what a method receives is checked and decoded.

:func:`validate_replies` turns one round's raw replies into :class:`ClientReply` values
(every requested payload validated and decoded) and counted failure reasons. It knows no
method: the payloads say what to check, the :class:`RoundState` says what was sent.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message, MessageType

from fedkd.wire import keys
from fedkd.wire.payloads import ClientMetrics, Expectation, Payload, metric
from strategies.core.transport import first_line

logger = logging.getLogger(__name__)


@dataclass
class RoundState:
    """One round as values: what was sent to whom, on which proxy rows, and its metrics.

    Attributes
    ----------
    server_round : int
        The round.
    partitions : list[int]
        The partition ids sampled for training, sorted.
    sent_to : dict[int, int]
        Node id -> partition id of every train message sent this round.
    proxy_indices : np.ndarray
        This round's proxy rows (indices into the proxy).
    metrics : dict
        The round's row of ``metrics.jsonl`` as it is built (shared with the strategy's
        ``round_metrics[server_round]``).
    """

    server_round: int
    partitions: list[int] = field(default_factory=list)
    sent_to: dict[int, int] = field(default_factory=dict)
    proxy_indices: np.ndarray = field(default_factory=lambda: np.arange(0))
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Under ``secagg``: the survivors' sum (a :class:`strategies.core.secure_rounds.SecureResult`).
    secure: Any = None


@dataclass
class ClientReply:
    """A validated train reply: who sent it and its decoded payloads.

    Attributes
    ----------
    partition_id, node_id, architecture : int
        The client.
    num_examples : int
        Its example count (the weight in example-weighted averages).
    metrics : dict
        Its decoded :class:`~fedkd.wire.payloads.ClientMetrics` (message keys).
    values : dict
        Payload name -> decoded value (``None`` for an optional payload that was unusable).
    uplink_bytes : int
        Bytes of the ArrayRecords it carried that count as the method's uplink.
    message : Message
        The raw reply (kept for byte counts and the audit; methods read :attr:`values`).
    """

    partition_id: int
    node_id: int
    architecture: int
    num_examples: int
    metrics: dict[str, Any]
    values: dict[str, Any]
    uplink_bytes: int
    message: Message

    def metric(self, key: str) -> float:
        """A numeric client metric by message key."""
        return metric(self.metrics, key)


def uplink_bytes(message: Message) -> int:
    """ArrayRecord bytes a reply carries, excluding evaluation-only outputs."""
    return sum(
        record.count_bytes()
        for name, record in message.content.array_records.items()
        if name != keys.EVALUATION
    )


_METRICS = ClientMetrics()


def read_reply(
    reply: Message,
    state: RoundState,
    payloads: Sequence[Payload],
    expectation: Callable[[int, int], Expectation],
    architecture_of: Callable[[int], int],
) -> tuple[ClientReply | None, str | None]:
    """A training reply checked and decoded: ``(ClientReply, None)``, or ``(None, reason)``
    when it is unusable.

    ``expectation(partition_id, num_examples)`` gives the checks' reference for the client
    (the example count is 0 until the client metrics are checked). Client errors are
    reduced to their first line: full tracebacks stay on the client. Optional payloads
    (evaluation-only outputs) that fail their checks decode to ``None`` instead.

    This is the one place every reply passes before any method reads it: who sent it and
    in answer to what, then each payload's arrays readable (:meth:`Payload.unreadable`),
    then each payload's :meth:`Payload.validate` (its schema), client metrics first.
    """
    if reply.has_error():
        return None, f"client error: {first_line(reply)}"
    if reply.metadata.src_node_id not in state.sent_to:
        return None, "reply from a node that was not sampled this round"
    if reply.metadata.message_type != MessageType.TRAIN:
        return None, "reply to another message type"
    partition_id = state.sent_to[reply.metadata.src_node_id]
    reason = _METRICS.validate(reply.content, expectation(partition_id, 0))
    if reason is not None:
        return None, reason
    metrics = _METRICS.decode(reply.content, expectation(partition_id, 0))
    num_examples = int(metric(metrics, keys.NUM_EXAMPLES))
    expect = expectation(partition_id, num_examples)
    others = [p for p in payloads if not isinstance(p, ClientMetrics)]
    for payload in others:
        if payload.required and (reason := _problem(payload, reply, expect)) is not None:
            return None, reason
    values: dict[str, Any] = {}
    for payload in others:
        if not payload.required and _problem(payload, reply, expect) is not None:
            values[payload.name] = None
        else:
            values[payload.name] = payload.decode(reply.content, expect)
    return ClientReply(
        partition_id=partition_id,
        node_id=reply.metadata.src_node_id,
        architecture=architecture_of(partition_id),
        num_examples=num_examples,
        metrics=metrics,
        values=values,
        uplink_bytes=uplink_bytes(reply),
        message=reply,
    ), None


def _problem(payload: Payload, reply: Message, expect: Expectation) -> str | None:
    """Why ``payload`` in ``reply`` is unusable: an unreadable array, else its checks."""
    return payload.unreadable(reply.content) or payload.validate(reply.content, expect)


def validate_replies(
    replies: Sequence[Message],
    state: RoundState,
    payloads: Sequence[Payload],
    expectation: Callable[[int, int], Expectation],
    architecture_of: Callable[[int], int],
) -> tuple[list[ClientReply], Counter[str]]:
    """Split replies into decoded valid ones (in partition order) and counted failure
    reasons."""
    valid: list[ClientReply] = []
    failures: Counter[str] = Counter()
    seen: set[int] = set()  # nodes that already replied this round
    for reply in replies:
        node = reply.metadata.src_node_id
        decoded: ClientReply | None
        reason: str | None
        if node in seen:  # only its first reply counts
            decoded, reason = None, "second reply from the same node"
        else:
            decoded, reason = read_reply(reply, state, payloads, expectation, architecture_of)
            if not reply.has_error():
                seen.add(node)
        if decoded is not None:
            valid.append(decoded)
        else:
            assert reason is not None
            failures[reason] += 1
            logger.debug(
                "round %s: rejected reply from node %s: %s",
                state.server_round,
                reply.metadata.src_node_id,
                reason,
            )
    # Replies arrive in completion order; aggregate in partition order so that float
    # sums (and so every metric) do not depend on which actor finished first.
    valid.sort(key=lambda reply: reply.partition_id)
    return valid, failures
