"""Moving messages: discovery, seeded sampling, send/receive with one resend, client states.

Nothing here knows a method: functions take the grid, the messages and plain values, and
return replies or values. The strategy's round loop (:mod:`strategies.base`) calls them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedkd.privacy import PrivacySpec
from fedkd.run.interrupt import check_stop
from fedkd.wire import keys
from fedkd.wire.payloads import Discovery
from fedkd.wire.payloads.base import Reporting

logger = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_SECONDS = 300.0
PULL_INTERVAL_SECONDS = 0.1  # as Flower's grids poll
#: Client error reasons that say the runtime, not the client, failed to run a message (Ray:
#: the actor is restarting after its process died); such messages are resent once.
TRANSIENT_ERRORS = ("ActorUnavailableError",)


@dataclass
class Federation:
    """What discovery learned: which node serves which partition, and what each declared.

    Attributes
    ----------
    node_of_partition : dict[int, int]
        Partition id -> node id (Flower's node ids are random; sampling is keyed on
        partition ids so that it is reproducible).
    label_histograms : dict[int, list[int]]
        Partition id -> the label counts it declared (empty when withheld under a privacy
        mechanism).
    examples : dict[int, int]
        Partition id -> the training example count it declared.
    histograms : bool
        Whether a discovery answer must carry its label histogram.
    architecture_of : dict[int, int]
        Partition id -> index of its client architecture.
    """

    node_of_partition: dict[int, int] = field(default_factory=dict)
    label_histograms: dict[int, list[int]] = field(default_factory=dict)
    architecture_of: dict[int, int] = field(default_factory=dict)
    examples: dict[int, int] = field(default_factory=dict)
    #: Clients send their label histograms (False: withheld under a privacy mechanism).
    histograms: bool = True
    #: How clients' counts relate to their data under the run's privacy mechanism (a class
    #: default, not a factory, so federations saved in older checkpoints have one too).
    reporting: Reporting = Reporting()  # noqa: RUF009 (frozen: never shared mutable state)

    @staticmethod
    def of(privacy: PrivacySpec, batch_size: int = 1) -> Federation:
        """An empty federation whose discovery answers carry histograms unless ``privacy``
        withholds them, checked against counts as ``privacy`` reports them (``batch_size``:
        clients' local batch size, which DP-SGD's public count depends on)."""
        return Federation(
            histograms=privacy.sends_unprotected(keys.LABEL_HISTOGRAM),
            reporting=Reporting(privacy, batch_size),
        )

    def declared_examples(self, partition_id: int) -> int:
        """The training example count a partition declared at discovery (0: unknown)."""
        examples = getattr(self, "examples", {})  # absent in checkpoints before counts
        if partition_id in examples:
            return examples[partition_id]
        return sum(self.label_histograms.get(partition_id, []))

    def add(self, node_id: int, found: Discovery) -> None:
        """Record one discovery answer (the first node to claim a partition keeps it)."""
        if found.partition_id in self.node_of_partition:
            logger.warning(
                "partition %s claimed by nodes %s and %s; keeping the first",
                found.partition_id,
                self.node_of_partition[found.partition_id],
                node_id,
            )
            return
        self.node_of_partition[found.partition_id] = node_id
        self.label_histograms[found.partition_id] = list(found.label_histogram)
        if not hasattr(self, "examples"):
            self.examples = {}
        self.examples[found.partition_id] = found.num_examples
        self.architecture_of[found.partition_id] = found.architecture


def discover(
    grid: Grid,
    federation: Federation,
    *,
    setup_json: str,
    expected: int,
    num_classes: int,
    num_architectures: int,
    timeout: float | None,
    observe: Callable[[Message], None] | None = None,
) -> None:
    """Ask every node for its partition id and declared data (once), filling ``federation``
    with the answers that fit the run (``expected`` partitions, ``num_classes``,
    ``num_architectures``); ``observe`` sees every reply that is not an error (the release
    ledger)."""
    node_ids = wait_for_nodes(grid, expected=expected, timeout=timeout)
    content = RecordDict({keys.CONFIG: ConfigRecord({keys.SETUP: setup_json})})
    messages = [
        Message(content=content, message_type=MessageType.QUERY, dst_node_id=node_id)
        for node_id in node_ids
    ]
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            logger.warning("node %s failed discovery: %s", node_id, first_line(reply))
            continue
        if observe is not None:
            observe(reply)
        try:
            found = Discovery.decode(
                reply.content,
                num_classes=num_classes,
                num_partitions=expected,
                num_architectures=num_architectures,
                require_histogram=getattr(federation, "histograms", True),
                reporting=federation.reporting,
            )
        except ValueError as exc:
            logger.warning("node %s sent an unusable discovery answer: %s", node_id, exc)
            continue
        federation.add(node_id, found)
    if not federation.node_of_partition:
        raise RuntimeError("no node answered the discovery query; nothing to train on")
    count, nodes = len(federation.node_of_partition), len(node_ids)
    (logger.debug if count == nodes else logger.warning)("discovered %s of %s nodes", count, nodes)


def wait_for_nodes(grid: Grid, *, expected: int, timeout: float | None = None) -> list[int]:
    """Node ids once ``expected`` nodes are connected (or ``timeout`` passes).

    Simulated and real SuperNodes register asynchronously; asking too early would
    silently run with whoever happened to be connected.
    """
    deadline = time.monotonic() + (DISCOVERY_TIMEOUT_SECONDS if timeout is None else timeout)
    while len(node_ids := sorted(grid.get_node_ids())) < expected:
        check_stop("while waiting for nodes")
        if time.monotonic() > deadline:
            logger.warning(
                "only %s of %s nodes connected after waiting; continuing with them",
                len(node_ids),
                expected,
            )
            break
        time.sleep(0.1)
    return node_ids


def sample_partitions(
    available: Iterable[int], fraction: float, *, seed: int, server_round: int, stream: int
) -> list[int]:
    """Sorted partition ids sampled reproducibly from ``(seed, round, stream)``."""
    ordered = sorted(available)
    count = max(1, round(fraction * len(ordered)))
    if count >= len(ordered):
        return ordered
    rng = np.random.default_rng([seed, server_round, stream])
    return sorted(int(p) for p in rng.choice(ordered, size=count, replace=False))


def poisson_sample(
    available: Iterable[int], rate: float, *, seed: int, server_round: int, stream: int
) -> list[int]:
    """Sorted partition ids, each taken independently with probability ``rate`` (Poisson
    sampling, reproducible from ``(seed, round, stream)``; may be empty)."""
    ordered = sorted(available)
    rng = np.random.default_rng([seed, server_round, stream, 0x9015])
    keep = rng.random(len(ordered)) < rate
    return [p for p, k in zip(ordered, keep, strict=True) if k]


def exchange(
    grid: Grid, messages: list[Message], *, timeout: float, server_round: int
) -> list[Message]:
    """Push ``messages`` and collect their replies until all are in or ``timeout`` passes
    (Flower's ``send_and_receive``), checking between polls whether the run was asked to
    stop (:func:`fedkd.run.interrupt.check_stop`). A grid that runs the ClientApp while
    pushing (``synchronous``, the inline engine) is asked directly."""
    if getattr(grid, "synchronous", False):
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        found = list(grid.pull_messages(pending))
        replies.extend(found)
        pending.difference_update(m.metadata.reply_to_message_id for m in found)
        if not pending or time.monotonic() >= deadline:
            break
        check_stop(f"in round {server_round}")
        time.sleep(PULL_INTERVAL_SECONDS)
    return replies


def send_and_receive(
    grid: Grid, messages: Iterable[Message], *, timeout: float, server_round: int
) -> tuple[list[Message], int]:
    """``grid.send_and_receive``, resending once, within the same deadline, the messages
    that failed for a transient runtime reason (:data:`TRANSIENT_ERRORS`: a Ray actor
    restarting after its process died). The ClientApp's context is only updated on
    success, so running the message again is safe. Messages told to fail (``fault``)
    are never resent. Returns the replies and how many messages were resent."""
    messages = list(messages)
    deadline = time.monotonic() + timeout
    replies = exchange(grid, messages, timeout=timeout, server_round=server_round)
    sent = {m.metadata.dst_node_id: m for m in messages}
    retry = [
        sent[r.metadata.src_node_id]
        for r in replies
        if r.has_error()
        and first_line(r).split(":", 1)[0] in TRANSIENT_ERRORS
        and r.metadata.src_node_id in sent
        and keys.FAULT
        not in sent[r.metadata.src_node_id].content.config_records.get(keys.CONFIG, {})
    ]
    remaining = deadline - time.monotonic()
    if not retry or remaining <= 0:
        return replies, 0
    again = {m.metadata.dst_node_id for m in retry}
    logger.info(
        "round %s: resending %s message(s) after a transient failure", server_round, len(retry)
    )
    kept = [r for r in replies if r.metadata.src_node_id not in again]
    fresh = [
        Message(
            content=m.content,
            message_type=m.metadata.message_type,
            dst_node_id=m.metadata.dst_node_id,
        )
        for m in retry
    ]
    return kept + exchange(grid, fresh, timeout=remaining, server_round=server_round), len(retry)


def export_client_states(
    grid: Grid,
    node_of_partition: dict[int, int],
    *,
    setup_json: str,
    timeout: float | None,
    observe: Callable[[Message], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Every discovered client's ``context.state`` records, by partition id (checkpoints).

    Raises
    ------
    RuntimeError
        A client did not answer or failed: the states would be incomplete.
    """
    partitions = {node: p for p, node in node_of_partition.items()}
    config = ConfigRecord({keys.SETUP: setup_json, keys.STATE_EXPORT: True})
    messages = [
        Message(
            content=RecordDict({keys.CONFIG: config}),
            message_type=MessageType.QUERY,
            dst_node_id=node_id,
        )
        for node_id in sorted(partitions)
    ]
    states: dict[int, dict[str, Any]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node_id = reply.metadata.src_node_id
        if reply.has_error() or node_id not in partitions:
            raise RuntimeError(f"node {node_id} could not export its state")
        if observe is not None:
            observe(reply)
        states[partitions[node_id]] = {
            name[len(keys.STATE_PREFIX) :]: record
            for name, record in reply.content.items()
            if name.startswith(keys.STATE_PREFIX)
        }
    missing = sorted(set(partitions.values()) - set(states))
    if missing:
        raise RuntimeError(f"partitions {missing} did not export their state in time")
    return states


def import_client_states(
    grid: Grid,
    node_of_partition: dict[int, int],
    states: dict[int, dict[str, Any]],
    *,
    setup_json: str,
    timeout: float | None,
) -> None:
    """Give each client back the ``context.state`` records a checkpoint saved for its
    partition (a resumed run's nodes are new: their node ids differ)."""
    messages = []
    for partition_id, records in sorted(states.items()):
        if not records:
            continue
        if partition_id not in node_of_partition:
            raise RuntimeError(f"partition {partition_id} has no node to restore its state")
        content = RecordDict(
            {keys.CONFIG: ConfigRecord({keys.SETUP: setup_json, keys.STATE_IMPORT: True})}
        )
        for name, record in records.items():
            content[keys.STATE_PREFIX + name] = record
        messages.append(
            Message(
                content=content,
                message_type=MessageType.QUERY,
                dst_node_id=node_of_partition[partition_id],
            )
        )
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    failed = [r.metadata.src_node_id for r in replies if r.has_error()]
    if failed or len(replies) < len(messages):
        raise RuntimeError(
            f"restoring client states failed ({len(messages) - len(replies)} no reply, "
            f"errors from nodes {failed})"
        )


def first_line(reply: Message) -> str:
    """A client error as a short, data-free reason.

    fedkd's ClientApp already sends one generic line (see ``fedkd.apps.client.safe_reason``).
    Anything else (a runtime's reason with a traceback or an exception's text, which could
    quote private data) is cut down to the exception's type name.
    """
    reason = (reply.error.reason if reply.error else None) or ""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    if not lines:
        return f"error code {reply.error.code if reply.error else '?'}"
    match = re.match(r"<class '([\w.]+)'>", lines[0])
    if match:  # Flower's runtimes: "<class 'X'>:<'message and traceback'>"
        return match.group(1).rsplit(".", 1)[-1]
    if len(lines) > 1:  # a traceback: its last line is "Type: message"
        return lines[-1].split(":", 1)[0][:100]
    return lines[0][:300]
