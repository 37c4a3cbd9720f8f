"""The secure-aggregation protocol's messages as Flower records, both ways.

Rounds 0, 1 and 3 of SecAgg+ (:mod:`fedkd.privacy.secagg`) travel as ``query`` messages
whose config names the stage (``secagg-stage``); round 2's routed shares ride in the
``train`` message and its masked input in the train reply
(:mod:`fedkd.wire.payloads.secure_sum`). Everything binary is a ``uint8`` or ``int64``
array in the ``secagg`` ArrayRecord, so ``ArrayRecord.count_bytes`` counts it as it counts
every other upload. Every ``*_from`` function checks what it reads and raises
:class:`~fedkd.privacy.secagg.ProtocolError` naming the problem: a malformed record never
reaches the protocol's state machines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedkd.privacy.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    FixedPointEncoding,
    KeyBroadcast,
    ProtocolError,
    RoutedShares,
    SecAggParams,
    UnmaskReply,
    UnmaskRequest,
)
from fedkd.privacy.secagg.keys import CIPHERTEXT_BYTES, KEY_BYTES
from fedkd.privacy.secagg.protocol import SESSION_BYTES, share_id
from fedkd.privacy.secagg.shamir import PRIME, SHARE_BYTES, Share
from fedkd.wire.arrays import array_values
from fedkd.wire.payloads.secure_sum import Segment, SumLayout
from fedkd.wire.secure import SumRule

#: RecordDict entry (ArrayRecord) holding a stage's binary data, both ways.
SECAGG = "secagg"
#: Query config: which protocol stage a message asks for.
STAGE = "secagg-stage"
ADVERTISE, SHARE, UNMASK = "advertise", "share", "unmask"
#: Config keys of the parameters (advertise) and of the session (every stage, train too).
SESSION = "secagg-session"
LENGTH, BOUND, CLIENTS = "secagg-length", "secagg-bound", "secagg-clients"
FRAC_BITS, DEGREE = "secagg-frac-bits", "secagg-degree"
METHOD_SEGMENTS, EVALUATION_SEGMENTS = "secagg-method-segments", "secagg-evaluation-segments"
#: ArrayRecord keys in the ``secagg`` record.
PUBLIC_KEYS = "public-keys"  # (2, 32) uint8: cipher and mask public keys
ROSTER = "roster"  # (n,) int64
PEERS = "peers"  # (d,) int64: neighbour ids (broadcast), receivers (shares), senders (routed)
PEER_KEYS = "peer-keys"  # (d, 2, 32) uint8
CIPHERTEXTS = "ciphertexts"  # (d, CIPHERTEXT_BYTES) uint8
SURVIVORS, DROPPED = "survivors", "dropped"  # (k,) int64
SELF_OWNERS, SELF_SHARES = "self-owners", "self-shares"  # (k,) int64, (k, 66) uint8
KEY_OWNERS, KEY_SHARES = "key-owners", "key-shares"

#: Keys of client replies and their protection (fedkd.wire.ledger): public keys are public,
#: encrypted shares and Shamir shares are what the protocol itself protects.
REPLY_KEYS = {
    PUBLIC_KEYS: "public",
    PEERS: "public",
    CIPHERTEXTS: "secure_aggregation",
    SELF_OWNERS: "public",
    KEY_OWNERS: "public",
    SELF_SHARES: "secure_aggregation",
    KEY_SHARES: "secure_aggregation",
}


@dataclass(frozen=True)
class RoundParams:
    """What the server announces with round 0: the protocol's parameters and the rule."""

    params: SecAggParams
    rule: SumRule
    layout: SumLayout

    def to_config(self) -> dict[str, Any]:
        p, e = self.params, self.params.encoding
        return {
            METHOD_SEGMENTS: [_segment_text(s) for s in self.layout.method],
            EVALUATION_SEGMENTS: [_segment_text(s) for s in self.layout.evaluation],
            SESSION: p.session,
            LENGTH: p.vector_length,
            BOUND: float(e.bound),
            CLIENTS: e.num_clients,
            FRAC_BITS: e.frac_bits,
            DEGREE: p.degree,
            **self.rule.to_config(),
        }

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> RoundParams:
        try:
            encoding = FixedPointEncoding(
                bound=float(config[BOUND]),
                num_clients=int(config[CLIENTS]),
                frac_bits=int(config[FRAC_BITS]),
            )
            params = SecAggParams(
                vector_length=int(config[LENGTH]),
                encoding=encoding,
                degree=int(config[DEGREE]),
                session=bytes(config[SESSION]),
            )
            layout = SumLayout(
                tuple(_segment(t) for t in config[METHOD_SEGMENTS]),
                tuple(_segment(t) for t in config[EVALUATION_SEGMENTS]),
            )
            if layout.length != params.vector_length:
                raise ValueError(
                    f"the layout has {layout.length} values, not {params.vector_length}"
                )
            return RoundParams(params, SumRule.from_config(config), layout)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed secure-aggregation parameters: {exc}") from exc


def _segment_text(segment: Segment) -> str:
    return f"{segment.payload}|{segment.key}|{','.join(str(n) for n in segment.shape)}"


def _segment(text: str) -> Segment:
    payload, key, shape = str(text).split("|")
    return Segment(payload, key, tuple(int(n) for n in shape.split(",") if n))


# ---- array helpers ------------------------------------------------------------------------


def _ids(values: Sequence[int]) -> Array:
    return Array(np.asarray(list(values), dtype=np.int64).reshape(-1))


def _blobs(values: Sequence[bytes], width: int) -> Array:
    if not values:
        return Array(np.zeros((0, width), dtype=np.uint8))
    return Array(np.stack([np.frombuffer(v, dtype=np.uint8) for v in values]))


def _read(record: ArrayRecord, key: str, dtype: type, shape: tuple[int | None, ...]) -> np.ndarray:
    if key not in record:
        raise ProtocolError(f"secure aggregation: {key} missing")
    try:
        values = array_values(record[key])
    except Exception as exc:  # bytes that do not deserialize
        raise ProtocolError(f"secure aggregation: {key} is not a readable array") from exc
    if values.dtype != np.dtype(dtype) or values.ndim != len(shape):
        raise ProtocolError(f"secure aggregation: {key} must be {np.dtype(dtype)} {shape}")
    for size, expected in zip(values.shape, shape, strict=True):
        if expected is not None and size != expected:
            raise ProtocolError(f"secure aggregation: {key} has shape {values.shape}")
    return values


def _read_ids(record: ArrayRecord, key: str) -> list[int]:
    values = _read(record, key, np.int64, (None,))
    if (values < 0).any() or len(set(values.tolist())) != len(values):
        raise ProtocolError(f"secure aggregation: {key} has negative or repeated ids")
    return [int(v) for v in values]


def _record(content: RecordDict) -> ArrayRecord:
    record = content.array_records.get(SECAGG)
    if record is None:
        raise ProtocolError(f"secure aggregation: the {SECAGG} record is missing")
    return record


# ---- round 0: keys --------------------------------------------------------------------------


def advertise_record(advert: AdvertiseKeys) -> ArrayRecord:
    keys = np.frombuffer(advert.cipher_public + advert.mask_public, dtype=np.uint8)
    return ArrayRecord({PUBLIC_KEYS: Array(keys.reshape(2, KEY_BYTES).copy())})


def advertise_from(content: RecordDict, client_id: int) -> AdvertiseKeys:
    keys = _read(_record(content), PUBLIC_KEYS, np.uint8, (2, KEY_BYTES))
    return AdvertiseKeys(client_id, keys[0].tobytes(), keys[1].tobytes())


def broadcast_record(broadcast: KeyBroadcast) -> ArrayRecord:
    peers = sorted(broadcast.keys)
    keys = [broadcast.keys[v].cipher_public + broadcast.keys[v].mask_public for v in peers]
    blob = _blobs(keys, 2 * KEY_BYTES).numpy().reshape(len(peers), 2, KEY_BYTES)
    return ArrayRecord(
        {ROSTER: _ids(broadcast.roster), PEERS: _ids(peers), PEER_KEYS: Array(blob.copy())}
    )


def broadcast_from(content: RecordDict) -> KeyBroadcast:
    record = _record(content)
    roster, peers = _read_ids(record, ROSTER), _read_ids(record, PEERS)
    keys = _read(record, PEER_KEYS, np.uint8, (len(peers), 2, KEY_BYTES))
    adverts = {
        v: AdvertiseKeys(v, keys[i, 0].tobytes(), keys[i, 1].tobytes()) for i, v in enumerate(peers)
    }
    return KeyBroadcast(tuple(roster), adverts)


# ---- round 1: encrypted shares, routed ------------------------------------------------------


def shares_record(bundle: EncryptedShares | RoutedShares) -> ArrayRecord:
    peers = sorted(bundle.ciphertexts)
    return ArrayRecord(
        {
            PEERS: _ids(peers),
            CIPHERTEXTS: _blobs([bundle.ciphertexts[v] for v in peers], CIPHERTEXT_BYTES),
        }
    )


def _ciphertexts(record: ArrayRecord) -> dict[int, bytes]:
    peers = _read_ids(record, PEERS)
    blobs = _read(record, CIPHERTEXTS, np.uint8, (len(peers), CIPHERTEXT_BYTES))
    return {v: blobs[i].tobytes() for i, v in enumerate(peers)}


def shares_from(content: RecordDict, client_id: int) -> EncryptedShares:
    return EncryptedShares(client_id, _ciphertexts(_record(content)))


def routed_from(content: RecordDict, client_id: int) -> RoutedShares:
    return RoutedShares(client_id, _ciphertexts(_record(content)))


# ---- round 3: unmasking ---------------------------------------------------------------------


def request_record(request: UnmaskRequest) -> ArrayRecord:
    return ArrayRecord(
        {SURVIVORS: _ids(sorted(request.survivors)), DROPPED: _ids(sorted(request.dropped))}
    )


def request_from(content: RecordDict) -> UnmaskRequest:
    record = _record(content)
    return UnmaskRequest(
        frozenset(_read_ids(record, SURVIVORS)), frozenset(_read_ids(record, DROPPED))
    )


def unmask_record(reply: UnmaskReply) -> ArrayRecord:
    record = ArrayRecord()
    for owners_key, shares_key, shares in (
        (SELF_OWNERS, SELF_SHARES, reply.self_mask_shares),
        (KEY_OWNERS, KEY_SHARES, reply.mask_key_shares),
    ):
        owners = sorted(shares)
        record[owners_key] = _ids(owners)
        record[shares_key] = _blobs([shares[u].value_bytes() for u in owners], SHARE_BYTES)
    return record


def unmask_from(content: RecordDict, client_id: int) -> UnmaskReply:
    record = _record(content)
    found: list[dict[int, Share]] = []
    for owners_key, shares_key in ((SELF_OWNERS, SELF_SHARES), (KEY_OWNERS, KEY_SHARES)):
        owners = _read_ids(record, owners_key)
        blobs = _read(record, shares_key, np.uint8, (len(owners), SHARE_BYTES))
        shares = {}
        for i, owner in enumerate(owners):
            y = int.from_bytes(blobs[i].tobytes(), "big")
            if y >= PRIME:
                raise ProtocolError(f"secure aggregation: share of {owner} is not a field element")
            shares[owner] = Share(share_id(client_id), y)
        found.append(shares)
    return UnmaskReply(client_id, self_mask_shares=found[0], mask_key_shares=found[1])


def stage_config(stage: str, session: bytes) -> dict[str, Any]:
    """The config entries of a stage's query (or, with stage ``mask``, of a train message)."""
    if len(session) != SESSION_BYTES:
        raise ValueError(f"session must be {SESSION_BYTES} bytes")
    return {STAGE: stage, SESSION: session}


def stage_of(config: ConfigRecord) -> str | None:
    """The stage a query asks for (None: not a secure-aggregation query)."""
    stage = config.get(STAGE)
    return str(stage) if stage is not None else None
