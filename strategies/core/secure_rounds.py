"""The server's side of secure aggregation: one SecAgg+ session per round.

:func:`open_session` runs the protocol's rounds 0 and 1 (``advertise`` and ``share``
queries) with the round's sampled clients before their ``train`` messages go out;
:meth:`SecureSession.train_entries` puts each client's routed shares into its train
message; :meth:`SecureSession.finish` takes the validated masked replies, asks the
survivors to ``unmask`` and returns the survivors' sum, split into each payload's value
(:class:`SecureResult`). Nothing here knows a method; the strategy glue is
:mod:`strategies.secure`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedkd.errors import ConfigError
from fedkd.privacy.secagg import (
    MaskedInput,
    ProtocolError,
    SecAggError,
    SecAggParams,
    SecAggServer,
    UnmaskReply,
)
from fedkd.privacy.secagg.protocol import SESSION_BYTES
from fedkd.wire import keys, secagg_records
from fedkd.wire.payloads import Payload
from fedkd.wire.payloads.secure_sum import LAYOUT_OPTION, MODULUS_OPTION, SumLayout, unpack
from fedkd.wire.secagg_records import RoundParams
from fedkd.wire.secure import SecAggSpec, SumRule, fit_encoding

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: ``send(messages) -> replies`` (the strategy's send/receive: resends, the release ledger).
Send = Callable[[list[Message]], list[Message]]


class SecureRoundFailed(Exception):
    """The round's secure aggregation cannot release a sum (too few clients or shares, too
    many dropouts); the message says why and the round is skipped."""


@dataclass
class SecureResult:
    """The survivors' sum, as a method reads it.

    Attributes
    ----------
    values : dict
        Payload name -> the value one reply standing for all survivors would decode to.
    sums : dict
        Payload name -> key -> the raw summed array (a mechanism's release reads these).
    weight : float
        The summed weights (survivors, or their example counts when size-weighted).
    partitions : list[int]
        The survivors.
    noise_added : bool
        Clients added their shares of the central noise (``secagg.noise=distributed``).
    """

    values: dict[str, Any]
    sums: dict[str, dict[str, np.ndarray]]
    weight: float
    partitions: list[int]
    noise_added: bool = False


@dataclass
class SecureSession:
    """One round's protocol state on the server."""

    round_params: RoundParams
    server: SecAggServer
    node_of_partition: dict[int, int]
    sampled: int
    max_dropouts: int
    query_config: dict[str, Any]
    metrics: dict[str, Any]
    routed: dict[int, ArrayRecord] = field(default_factory=dict)

    @property
    def partitions(self) -> list[int]:
        """The clients that shared their keys: the ones that get a train message."""
        return sorted(self.server.shared)

    @property
    def layout(self) -> SumLayout:
        return self.round_params.layout

    def expectation_options(self) -> dict[str, Any]:
        """What :class:`~fedkd.wire.payloads.secure_sum.SecureSum` checks replies against."""
        bits = self.round_params.params.encoding.modulus_bits
        return {LAYOUT_OPTION: self.layout, MODULUS_OPTION: bits}

    def train_entries(self, partition_id: int) -> tuple[dict[str, Any], ArrayRecord]:
        """The session key for a client's train config and its routed shares (counted in
        ``secagg_downlink_bytes`` when routed, not in the method's ``downlink_bytes``)."""
        return {secagg_records.SESSION: self.round_params.params.session}, self.routed[partition_id]

    def finish(
        self,
        send: Send,
        masked: dict[int, np.ndarray],
        payloads: Sequence[Payload],
        *,
        noise_added: bool,
    ) -> SecureResult:
        """Round 3: unmask the sum of the clients in ``masked`` (partition -> masked vector).

        Raises
        ------
        SecureRoundFailed
            More than ``max_dropouts`` of the sampled clients sent no usable masked input,
            or too few shares arrived to remove the masks.
        """
        started = time.perf_counter()
        inputs = [MaskedInput(p, v) for p, v in sorted(masked.items()) if p in self.server.shared]
        dropouts = self.sampled - len(inputs)
        self.metrics["secagg_dropouts"] = dropouts
        if dropouts > self.max_dropouts:
            raise SecureRoundFailed(
                f"{dropouts} of {self.sampled} sampled clients dropped out, more than "
                f"secagg.max_dropouts={self.max_dropouts}; no sum is released"
            )
        try:
            request = self.server.collect_masked_inputs(inputs)
        except SecAggError as exc:
            raise SecureRoundFailed(str(exc)) from exc
        record = secagg_records.request_record(request)
        replies = send(self._queries(secagg_records.UNMASK, request.survivors, lambda _: record))
        answers = self._decoded(replies, secagg_records.unmask_from, "unmask shares")
        answers = [a for a in answers if self._asked(a)]
        try:  # a share that does not reconstruct (hostile or corrupt) stops the round only
            total = self.server.unmask(answers)
        except SecAggError as exc:
            raise SecureRoundFailed(str(exc)) from exc
        survivors = sorted(request.survivors)
        rule = self.round_params.rule
        values, sums, weight = unpack(self.layout, payloads, total, rule, len(survivors))
        self.metrics["secagg_survivors"] = len(survivors)
        self.metrics["secagg_seconds"] = self.metrics.get("secagg_seconds", 0.0) + (
            time.perf_counter() - started
        )
        return SecureResult(values, sums, weight, survivors, noise_added)

    def _asked(self, answer: UnmaskReply) -> bool:
        """Whether a reply holds only shares the server asked that client for (a reply
        that does not is dropped, not allowed to stop the unmasking)."""
        graph, server = self.server.graph, self.server
        assert graph is not None
        for owners, wanted in (
            (answer.self_mask_shares, server.survivors),
            (answer.mask_key_shares, server.dropped),
        ):
            for owner in owners:
                if owner not in wanted or answer.client_id not in graph.holders(owner):
                    logger.warning("client %s sent shares not asked for", answer.client_id)
                    return False
        return True

    def _queries(
        self,
        stage: str,
        partitions: Any,
        record_for: Callable[[int], ArrayRecord],
        extra: dict[str, Any] | None = None,
    ) -> list[Message]:
        messages = []
        config = {
            **self.query_config,
            **(extra or {}),
            **secagg_records.stage_config(stage, self._session),
        }
        down = 0
        for partition_id in sorted(partitions):
            record = record_for(partition_id)
            down += record.count_bytes()
            content = RecordDict({keys.CONFIG: ConfigRecord(config), secagg_records.SECAGG: record})
            node = self.node_of_partition[partition_id]
            messages.append(Message(content, message_type=MessageType.QUERY, dst_node_id=node))
        self.metrics["secagg_downlink_bytes"] = self.metrics.get("secagg_downlink_bytes", 0) + down
        return messages

    def _decoded(
        self, replies: list[Message], read: Callable[[RecordDict, int], T], what: str
    ) -> list[T]:
        """Each usable reply read by ``read(content, partition)``; a malformed one is logged
        and left out (the protocol then treats that client as dropped)."""
        found = []
        for partition_id, content in self._answers(replies):
            try:
                found.append(read(content, partition_id))
            except ProtocolError as exc:
                logger.warning("client %s sent unusable %s: %s", partition_id, what, exc)
        return found

    def _answers(self, replies: list[Message]) -> list[tuple[int, RecordDict]]:
        """(partition, content) of each usable reply; counts the protocol's uplink bytes."""
        node_to_partition = {n: p for p, n in self.node_of_partition.items()}
        found = []
        for reply in replies:
            partition_id = node_to_partition.get(reply.metadata.src_node_id)
            if reply.has_error() or partition_id is None:
                continue
            record = reply.content.array_records.get(secagg_records.SECAGG)
            if record is not None:
                up = self.metrics.get("secagg_uplink_bytes", 0) + record.count_bytes()
                self.metrics["secagg_uplink_bytes"] = up
            found.append((partition_id, reply.content))
        return found

    @property
    def _session(self) -> bytes:
        return self.round_params.params.session


def open_session(
    send: Send,
    *,
    spec: SecAggSpec,
    partitions: Sequence[int],
    node_of_partition: dict[int, int],
    layout: SumLayout,
    rule: SumRule,
    bound: float,
    query_config: dict[str, Any],
    metrics: dict[str, Any],
) -> SecureSession:
    """Rounds 0 and 1 with the sampled ``partitions``: keys, then encrypted shares.

    Raises
    ------
    SecureRoundFailed
        Fewer than two clients, more than ``max_dropouts`` lost before masking, or a graph
        that cannot tolerate the dropouts (a Poisson sample smaller than planned).
    """
    started = time.perf_counter()
    sampled = len(partitions)
    if sampled < 2:
        raise SecureRoundFailed(f"secure aggregation needs at least 2 clients, {sampled} sampled")
    try:
        degree = spec.degree_for(sampled)
    except ConfigError as exc:
        raise SecureRoundFailed(str(exc)) from exc
    encoding = fit_encoding(bound, sampled, spec.frac_bits)
    if encoding.frac_bits < spec.frac_bits:
        logger.info(
            "secure aggregation: %s fractional bits (not %s) fit the sum of %s values up to %g",
            encoding.frac_bits,
            spec.frac_bits,
            sampled,
            bound,
        )
    params = SecAggParams(layout.length, encoding, degree, os.urandom(SESSION_BYTES))
    session = SecureSession(
        RoundParams(params, rule, layout),
        SecAggServer(params),
        node_of_partition,
        sampled,
        spec.dropouts_for(sampled),
        query_config,
        metrics,
    )
    metrics.update(
        {
            "secagg_degree": degree,
            "secagg_frac_bits": encoding.frac_bits,
            "secagg_modulus_bits": encoding.modulus_bits,
        }
    )
    announced = session.round_params.to_config()
    replies = send(
        session._queries(secagg_records.ADVERTISE, partitions, lambda _: ArrayRecord(), announced)
    )
    adverts = session._decoded(replies, secagg_records.advertise_from, "keys")
    _check_lost(sampled - len(adverts), session.max_dropouts, "advertising keys")
    try:
        broadcasts = session.server.collect_keys(adverts)
    except SecAggError as exc:
        raise SecureRoundFailed(str(exc)) from exc
    replies = send(
        session._queries(
            secagg_records.SHARE,
            broadcasts,
            lambda p: secagg_records.broadcast_record(broadcasts[p]),
        )
    )
    bundles = session._decoded(replies, secagg_records.shares_from, "shares")
    graph = session.server.graph
    assert graph is not None
    bundles = [b for b in bundles if set(b.ciphertexts) == graph.neighbours[b.sender]]
    _check_lost(sampled - len(bundles), session.max_dropouts, "sharing keys")
    try:
        routed = session.server.route_shares(bundles)
    except SecAggError as exc:
        raise SecureRoundFailed(str(exc)) from exc
    session.routed = {p: secagg_records.shares_record(r) for p, r in routed.items()}
    routed_bytes = sum(record.count_bytes() for record in session.routed.values())
    metrics["secagg_downlink_bytes"] = metrics.get("secagg_downlink_bytes", 0) + routed_bytes
    metrics["secagg_seconds"] = time.perf_counter() - started
    return session


def _check_lost(lost: int, max_dropouts: int, stage: str) -> None:
    if lost > max_dropouts:
        raise SecureRoundFailed(
            f"{lost} sampled clients dropped out before {stage}, more than "
            f"secagg.max_dropouts={max_dropouts}; the round is skipped"
        )
