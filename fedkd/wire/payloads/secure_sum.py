"""The masked sum: under ``secagg`` one array replaces every summable payload of a reply.

A client computes its payloads as always (protected, poisoned, float32), then
:func:`pack` turns the summable ones into one flat float64 vector of summands
(:meth:`Payload.summands`, in the order of :class:`SumLayout`) plus its weight, the
SecAgg+ client masks it, and the reply carries ``secagg-masked`` (the method's part, in
``predictions``, counted as uplink) and ``secagg-masked-evaluation`` (the test-set
predictions' part, in ``evaluation``, not counted), words below ``2**b`` (``uint32`` when
``b <= 32``, as many bytes as float32 rows; else ``uint64``). The
summable payloads' own keys never leave the client.

The server checks each reply's masked arrays here (:class:`SecureSum`: dtype, shape, every
word reduced modulo ``2**b``); what it cannot check any more (probability rows, count caps,
magnitudes of one client's rows) is listed in docs/PRIVACY.md. After unmasking,
:func:`unpack` splits the survivors' sum into each payload's value
(:meth:`Payload.from_sums`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from flwr.app import RecordDict

from fedkd.privacy import PrivacySpec
from fedkd.wire import keys
from fedkd.wire.arrays import array_values
from fedkd.wire.payloads.base import ClientRound, Expectation, Payload, read_array
from fedkd.wire.payloads.registry import register
from fedkd.wire.secure import SumRule

MASKED = "secagg-masked"
MASKED_EVALUATION = "secagg-masked-evaluation"
#: Expectation.options entry: the round's :class:`SumLayout` and modulus bits.
LAYOUT_OPTION = "secagg_layout"
MODULUS_OPTION = "secagg_modulus_bits"


@dataclass(frozen=True)
class Segment:
    """One summed array: which payload, which key, its shape."""

    payload: str
    key: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SumLayout:
    """Where each summed array lives in the flat vector: the method's payloads, then the
    weight (one word), then the evaluation-only payloads."""

    method: tuple[Segment, ...]
    evaluation: tuple[Segment, ...] = ()

    @staticmethod
    def build(payloads: Sequence[Payload], expect: Expectation) -> SumLayout:
        """The layout of ``payloads``' summable members, with shapes from ``expect``."""
        method: list[Segment] = []
        evaluation: list[Segment] = []
        for payload in payloads:
            if not payload.summable:
                continue
            part = method if payload.counted else evaluation
            for key, shape in payload.sum_shapes(expect).items():
                part.append(Segment(payload.name, key, tuple(int(s) for s in shape)))
        return SumLayout(tuple(method), tuple(evaluation))

    @property
    def method_length(self) -> int:
        return sum(s.size for s in self.method) + 1

    @property
    def length(self) -> int:
        return self.method_length + sum(s.size for s in self.evaluation)

    def payload_names(self) -> list[str]:
        return list(dict.fromkeys(s.payload for s in (*self.method, *self.evaluation)))

    def split(self, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The method's part and the evaluation part of a (masked) vector."""
        return vector[: self.method_length], vector[self.method_length :]


def pack(
    layout: SumLayout,
    payloads: Sequence[Payload],
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    rule: SumRule,
    *,
    weight: float,
    client: ClientRound,
) -> np.ndarray:
    """A client's flat summand vector (float64) from its payloads' decoded ``arrays``.

    Raises
    ------
    ValueError
        A payload's summands do not have the layout's shape (the client and the server
        disagree on the round's shapes).
    """
    summands: dict[tuple[str, str], np.ndarray] = {}
    for payload in payloads:
        if payload.name in arrays:
            values = payload.summands(arrays[payload.name], rule, weight=weight, client=client)
            summands.update({(payload.name, k): v for k, v in values.items()})
    parts = []
    for segment in layout.method:
        parts.append(_part(summands, segment))
    parts.append(np.array([weight], dtype=np.float64))
    for segment in layout.evaluation:
        parts.append(_part(summands, segment))
    return np.concatenate(parts)


def _part(summands: Mapping[tuple[str, str], np.ndarray], segment: Segment) -> np.ndarray:
    values = summands.get((segment.payload, segment.key))
    if values is None or np.shape(values) != segment.shape:
        raise ValueError(
            f"secure aggregation: {segment.payload}/{segment.key} must have shape "
            f"{segment.shape}, got {None if values is None else np.shape(values)}"
        )
    return np.asarray(values, dtype=np.float64).ravel()


def unpack(
    layout: SumLayout, payloads: Sequence[Payload], total: np.ndarray, rule: SumRule, count: int
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]], float]:
    """Each payload's value from the survivors' summed vector, the raw sums by payload and
    key (a mechanism's release reads them), and the total weight."""
    sums: dict[str, dict[str, np.ndarray]] = {}
    method, evaluation = layout.split(np.asarray(total, dtype=np.float64))
    for segments, part in ((layout.method, method[:-1]), (layout.evaluation, evaluation)):
        offset = 0
        for segment in segments:
            chunk = part[offset : offset + segment.size].reshape(segment.shape)
            sums.setdefault(segment.payload, {})[segment.key] = chunk
            offset += segment.size
    weight = float(method[-1])
    by_name = {p.name: p for p in payloads}
    values = {
        name: by_name[name].from_sums(sums[name], rule, weight=weight, count=count)
        for name in layout.payload_names()
    }
    return values, sums, weight


@register
class SecureSum(Payload):
    """``secagg-masked`` (``predictions``) and ``secagg-masked-evaluation``
    (``evaluation``): a client's masked summand vector, words below ``2**b`` (``uint32``
    when ``b <= 32``, else ``uint64``).

    The server's checks: both parts present when the layout has them, ``uint64``, the
    layout's lengths, every word below the modulus. Decoded as the whole masked vector.
    """

    name: ClassVar[str] = "secure-sum"
    order: ClassVar[int] = 95
    keys: ClassVar[tuple[str, ...]] = (MASKED,)

    def protection(self, key: str, privacy: PrivacySpec) -> str:
        return "secure_aggregation"

    def compute(self, client: ClientRound) -> dict[str, Any]:
        raise NotImplementedError("the masked sum is made by fedkd.apps.secure_client")

    def _parts(self, content: RecordDict) -> tuple[np.ndarray | None, np.ndarray | None]:
        found = []
        for record_name, key in ((keys.PREDICTIONS, MASKED), (keys.EVALUATION, MASKED_EVALUATION)):
            record = content.array_records.get(record_name)
            array = None if record is None or key not in record else read_array(record[key])
            found.append(array)
        return found[0], found[1]

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        layout: SumLayout = expect.options[LAYOUT_OPTION]
        bits = int(expect.options[MODULUS_OPTION])
        dtype, limit = np.dtype(word_type(bits)), (1 << bits) - 1
        method, evaluation = self._parts(content)
        lengths = (layout.method_length, layout.length - layout.method_length)
        for key, part, length in zip(
            (MASKED, MASKED_EVALUATION), (method, evaluation), lengths, strict=True
        ):
            if length == 0:
                continue
            if part is None:
                return f"{key}: missing"
            if part.dtype != dtype or part.shape != (length,):
                return f"{key}: must be {dtype} of shape ({length},)"
            if int(part.max(initial=0)) > limit:
                return f"{key}: not reduced modulo 2**b"
        return None

    def decode(self, content: RecordDict, expect: Expectation) -> np.ndarray:
        method, evaluation = self._parts(content)
        assert method is not None
        parts = [method] if evaluation is None else [method, evaluation]
        return np.concatenate(parts).astype(np.uint64)


@register
class SecureSumEvaluation(Payload):
    """The evaluation part of :class:`SecureSum` (checked and decoded there); registered so
    that the release ledger knows who owns ``secagg-masked-evaluation``."""

    name: ClassVar[str] = "secure-sum-evaluation"
    order: ClassVar[int] = 96
    record: ClassVar[str] = keys.EVALUATION
    keys: ClassVar[tuple[str, ...]] = (MASKED_EVALUATION,)
    counted: ClassVar[bool] = False
    required: ClassVar[bool] = False

    def protection(self, key: str, privacy: PrivacySpec) -> str:
        return "secure_aggregation"

    def compute(self, client: ClientRound) -> dict[str, Any]:
        raise NotImplementedError("the masked sum is made by fedkd.apps.secure_client")

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        return None  # SecureSum checks both parts

    def decode(self, content: RecordDict, expect: Expectation) -> None:
        return None


def word_type(modulus_bits: int) -> type[np.unsignedinteger[Any]]:
    """The narrowest unsigned type holding words below ``2**modulus_bits``: a sum of
    probabilities over tens of clients fits ``uint32``, as many bytes as float32 rows."""
    return np.uint32 if modulus_bits <= 32 else np.uint64


def masked_record_values(
    masked: np.ndarray, layout: SumLayout, modulus_bits: int
) -> dict[str, np.ndarray]:
    """The two parts of a masked vector by key, as :func:`word_type` words (the evaluation
    part only when non-empty)."""
    words = np.asarray(masked, dtype=np.uint64).astype(word_type(modulus_bits))
    method, evaluation = layout.split(words)
    out = {MASKED: method}
    if evaluation.size:
        out[MASKED_EVALUATION] = evaluation
    return out


def client_arrays(content: RecordDict, payloads: Sequence[Payload]) -> dict[str, dict[str, Any]]:
    """Remove every summable payload's arrays from a reply's ``content``; return them
    decoded, by payload name (what :func:`pack` reads)."""
    taken: dict[str, dict[str, Any]] = {}
    for payload in payloads:
        record = content.array_records.get(payload.record)
        if not payload.summable or record is None:
            continue
        values = {}
        for key in payload.owned(record):
            values[key] = array_values(record[key])
            del record[key]
        if values:
            taken[payload.name] = values
        if not record.keys():
            del content[payload.record]
    return taken
