"""Client and server state machines of SecAgg / SecAgg+ (four rounds, messages as data).

Round 0 (advertise keys): each client sends its two X25519 public keys; the server fixes the
roster, derives the neighbour graph and sends each client its neighbours' keys.
Round 1 (share keys): each client Shamir-shares its self-mask seed ``b_u`` and its mask
private key among its closed neighbourhood and sends each neighbour's pair of shares
encrypted under their pairwise c-key; the server routes the ciphertexts.
Round 2 (masked input): ``y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv) mod 2**b`` over the
neighbours that sent shares (``+`` when ``u < v``).
Round 3 (unmasking): the server names the survivors (sent ``y``) and the dropped (shared keys
but sent no ``y``); each client returns its share of ``b_v`` for surviving ``v`` and of
``v``'s mask key for dropped ``v``, never both for one ``v``. The server removes the masks
and decodes the survivors' sum.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fedkd.privacy.secagg import keys, shamir
from fedkd.privacy.secagg.errors import DoubleMaskingViolation, ProtocolError, TooManyDropouts
from fedkd.privacy.secagg.fixed_point import FixedPointEncoding
from fedkd.privacy.secagg.graph import NeighbourGraph, neighbour_graph
from fedkd.privacy.secagg.prg import expand_mask
from fedkd.privacy.secagg.shamir import RandomBytes, Share

SESSION_BYTES = 32


@dataclass(frozen=True)
class SecAggParams:
    """What the server announces before round 0 and every party uses.

    Parameters
    ----------
    vector_length
        Length of every client's flat input.
    encoding
        The fixed-point encoding (bound, client count, fractional bits -> modulus).
    degree
        Neighbour count ``k`` of the SecAgg+ graph; ``k >= n - 1`` is the complete graph.
    session
        32 fresh random bytes naming this aggregation: they seed the graph and bind every
        derived key and ciphertext to it, so nothing carries over between aggregations.
    """

    vector_length: int
    encoding: FixedPointEncoding
    degree: int
    session: bytes

    def __post_init__(self) -> None:
        if isinstance(self.vector_length, bool) or not isinstance(self.vector_length, int):
            raise ValueError(f"vector_length must be an integer, got {self.vector_length!r}")
        if self.vector_length < 1:
            raise ValueError(f"vector_length must be >= 1, got {self.vector_length}")
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 1:
            raise ValueError(f"secagg degree must be an integer >= 1, got {self.degree!r}")
        if len(self.session) != SESSION_BYTES:
            raise ValueError(f"session must be {SESSION_BYTES} bytes, got {len(self.session)}")


# ---- messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client -> server: the two public keys."""

    client_id: int
    cipher_public: bytes
    mask_public: bytes


@dataclass(frozen=True)
class KeyBroadcast:
    """Round 0, server -> client: the roster and the public keys of the client's neighbours."""

    roster: tuple[int, ...]
    keys: dict[int, AdvertiseKeys]


@dataclass(frozen=True)
class EncryptedShares:
    """Round 1, client -> server: ``receiver -> ciphertext`` for each neighbour."""

    sender: int
    ciphertexts: dict[int, bytes]


@dataclass(frozen=True)
class RoutedShares:
    """Round 1, server -> client: ``sender -> ciphertext`` addressed to this client."""

    receiver: int
    ciphertexts: dict[int, bytes]


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client -> server: ``y_u`` as ``uint64`` values below ``2**b``."""

    client_id: int
    masked: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, server -> client: who sent ``y`` (survivors) and who did not (dropped)."""

    survivors: frozenset[int]
    dropped: frozenset[int]


@dataclass(frozen=True)
class UnmaskReply:
    """Round 3, client -> server: shares of survivors' self-mask seeds and of dropped
    clients' mask keys, keyed by the owner of the secret."""

    client_id: int
    self_mask_shares: dict[int, Share] = field(default_factory=dict)
    mask_key_shares: dict[int, Share] = field(default_factory=dict)


def share_id(client_id: int) -> int:
    """The Shamir x-coordinate of ``client_id``'s shares: ``client_id + 1`` (never 0)."""
    return client_id + 1


def _check_id(client_id: int) -> None:
    if isinstance(client_id, bool) or not isinstance(client_id, int):
        raise ValueError(f"client ids must be integers, got {client_id!r}")
    if not 0 <= client_id < 1 << 63:
        raise ValueError(f"client ids must be in [0, 2**63), got {client_id}")


def pairwise_mask(
    own_id: int,
    own_mask_private: bytes,
    peer_id: int,
    peer_mask_public: bytes,
    params: SecAggParams,
) -> np.ndarray:
    """``PRG(s_uv)`` with the sign client ``own_id`` adds it with: ``+`` when
    ``own_id < peer_id`` else ``-`` (as ``2**b - PRG``), so the pair's masks cancel."""
    seed = keys.agree(
        own_mask_private, peer_mask_public, purpose=keys.MASK_PURPOSE, session=params.session
    )
    mask = expand_mask(seed, params.vector_length, params.encoding.modulus_bits)
    return mask if own_id < peer_id else params.encoding.reduce(np.uint64(0) - mask)


# ---- client ---------------------------------------------------------------------------


class SecAggClient:
    """One client's side of one aggregation; call the four rounds in order.

    ``rng`` draws the key pairs, the self-mask seed, the Shamir coefficients and the AEAD
    nonces; the default is ``os.urandom``. Tests pass a seeded byte source.
    """

    def __init__(
        self, client_id: int, params: SecAggParams, *, rng: RandomBytes = os.urandom
    ) -> None:
        _check_id(client_id)
        self.client_id = client_id
        self.params = params
        self._rng = rng
        self._cipher_keys = keys.KeyPair.generate(rng)
        self._mask_keys = keys.KeyPair.generate(rng)
        self._self_mask_seed = rng(shamir.SECRET_BYTES)
        self._stage = 0
        self._graph: NeighbourGraph | None = None
        self._peer_keys: dict[int, AdvertiseKeys] = {}
        self._own_shares: tuple[Share, Share] | None = None
        self._held: dict[int, tuple[Share, Share]] = {}  # owner -> (b share, key share)
        self._revealed_self: set[int] = set()
        self._revealed_key: set[int] = set()

    def _advance(self, expected: int, name: str) -> None:
        if self._stage != expected:
            raise ProtocolError(f"client {self.client_id}: {name} called out of order")
        self._stage = expected + 1

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0."""
        self._advance(0, "advertise_keys")
        return AdvertiseKeys(
            self.client_id, self._cipher_keys.public_bytes, self._mask_keys.public_bytes
        )

    def share_keys(self, broadcast: KeyBroadcast) -> EncryptedShares:
        """Round 1: check the broadcast against the graph, share ``b_u`` and the mask key."""
        self._advance(1, "share_keys")
        if self.client_id not in broadcast.roster:
            raise ProtocolError(f"client {self.client_id} is not in the roster")
        graph = neighbour_graph(broadcast.roster, self.params.degree, seed=self.params.session)
        neighbours = graph.neighbours[self.client_id]
        if set(broadcast.keys) != neighbours:
            raise ProtocolError(
                f"client {self.client_id}: keys sent for {sorted(broadcast.keys)}, "
                f"but its neighbours are {sorted(neighbours)}"
            )
        self._graph, self._peer_keys = graph, dict(broadcast.keys)
        holders = graph.holders(self.client_id)
        ids = [share_id(u) for u in holders]
        b_shares = shamir.split(self._self_mask_seed, ids, graph.threshold, rng=self._rng)
        key_shares = shamir.split(
            self._mask_keys.private_bytes, ids, graph.threshold, rng=self._rng
        )
        own = share_id(self.client_id)
        self._own_shares = (b_shares[own], key_shares[own])
        ciphertexts = {}
        for v in sorted(neighbours):
            pair_key = keys.agree(
                self._cipher_keys.private_bytes,
                broadcast.keys[v].cipher_public,
                purpose=keys.CIPHER_PURPOSE,
                session=self.params.session,
            )
            ciphertexts[v] = keys.encrypt_shares(
                pair_key,
                session=self.params.session,
                sender=self.client_id,
                receiver=v,
                self_mask_share=b_shares[share_id(v)].y,
                mask_key_share=key_shares[share_id(v)].y,
                rng=self._rng,
            )
        return EncryptedShares(self.client_id, ciphertexts)

    def masked_input(self, values: np.ndarray, routed: RoutedShares) -> MaskedInput:
        """Round 2: decrypt the neighbours' shares, return ``y_u``."""
        self._advance(2, "masked_input")
        assert self._graph is not None and self._own_shares is not None
        if routed.receiver != self.client_id:
            raise ProtocolError(f"shares for {routed.receiver} routed to {self.client_id}")
        flat = np.asarray(values).ravel()
        if flat.size != self.params.vector_length:
            raise ValueError(
                f"secagg input has {flat.size} values, expected {self.params.vector_length}"
            )
        encoded = self.params.encoding.encode(flat)
        neighbours = self._graph.neighbours[self.client_id]
        mine = share_id(self.client_id)
        for sender, ciphertext in routed.ciphertexts.items():
            if sender not in neighbours:
                raise ProtocolError(
                    f"client {self.client_id} got shares from non-neighbour {sender}"
                )
            pair_key = keys.agree(
                self._cipher_keys.private_bytes,
                self._peer_keys[sender].cipher_public,
                purpose=keys.CIPHER_PURPOSE,
                session=self.params.session,
            )
            b_share, key_share = keys.decrypt_shares(
                pair_key,
                ciphertext,
                session=self.params.session,
                sender=sender,
                receiver=self.client_id,
            )
            self._held[sender] = (Share(mine, b_share), Share(mine, key_share))
        self._held[self.client_id] = self._own_shares
        modulus_bits = self.params.encoding.modulus_bits
        total = encoded + expand_mask(self._self_mask_seed, flat.size, modulus_bits)
        for v in sorted(routed.ciphertexts):
            total = total + pairwise_mask(
                self.client_id,
                self._mask_keys.private_bytes,
                v,
                self._peer_keys[v].mask_public,
                self.params,
            )
        return MaskedInput(self.client_id, self.params.encoding.reduce(total))

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Round 3: shares of ``b_v`` for surviving and of the mask key for dropped owners.

        Refuses (``DoubleMaskingViolation``) when one owner is named both survivor and
        dropped, now or across requests, or when this client itself is called dropped.
        """
        if self._stage not in (3, 4):
            raise ProtocolError(f"client {self.client_id}: unmask called before masked_input")
        self._stage = 4
        both = request.survivors & request.dropped
        if both:
            raise DoubleMaskingViolation(
                f"client {self.client_id} refuses: {sorted(both)} named both survived and dropped"
            )
        if self.client_id in request.dropped or self.client_id not in request.survivors:
            raise DoubleMaskingViolation(
                f"client {self.client_id} refuses: it sent its masked input but is not a survivor"
            )
        held = set(self._held)
        flipped = (held & request.survivors & self._revealed_key) | (
            held & request.dropped & self._revealed_self
        )
        if flipped:
            raise DoubleMaskingViolation(
                f"client {self.client_id} refuses: {sorted(flipped)} were named the other way "
                "in an earlier request"
            )
        survivors, dropped = held & request.survivors, held & request.dropped
        self._revealed_self |= survivors
        self._revealed_key |= dropped
        return UnmaskReply(
            self.client_id,
            self_mask_shares={u: self._held[u][0] for u in sorted(survivors)},
            mask_key_shares={u: self._held[u][1] for u in sorted(dropped)},
        )


# ---- server ---------------------------------------------------------------------------


class SecAggServer:
    """The server's side of one aggregation: routes messages, then unmasks the sum."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self._stage = 0
        self.graph: NeighbourGraph | None = None
        self.public_keys: dict[int, AdvertiseKeys] = {}  # round 0, by client
        self.shared: frozenset[int] = frozenset()  # U2: sent their shares
        self.survivors: frozenset[int] = frozenset()  # U3: sent y
        self.dropped: frozenset[int] = frozenset()  # U2 - U3
        self._masked: dict[int, np.ndarray] = {}
        self.recovered_mask_keys: dict[int, bytes] = {}

    def _advance(self, expected: int, name: str) -> None:
        if self._stage != expected:
            raise ProtocolError(f"server: {name} called out of order")
        self._stage = expected + 1

    def collect_keys(self, adverts: Iterable[AdvertiseKeys]) -> dict[int, KeyBroadcast]:
        """Round 0: fix the roster and graph; a broadcast per client."""
        self._advance(0, "collect_keys")
        for advert in adverts:
            _check_id(advert.client_id)
            if advert.client_id in self.public_keys:
                raise ProtocolError(f"client {advert.client_id} advertised keys twice")
            for key in (advert.cipher_public, advert.mask_public):
                if len(key) != keys.KEY_BYTES:
                    raise ProtocolError(f"client {advert.client_id} sent a malformed public key")
            self.public_keys[advert.client_id] = advert
        roster = tuple(sorted(self.public_keys))
        if len(roster) > self.params.encoding.num_clients:
            raise ProtocolError(
                f"{len(roster)} clients advertised keys, but the encoding's modulus is sized for "
                f"num_clients={self.params.encoding.num_clients}"
            )
        self.graph = neighbour_graph(roster, self.params.degree, seed=self.params.session)
        return {
            u: KeyBroadcast(
                roster, {v: self.public_keys[v] for v in sorted(self.graph.neighbours[u])}
            )
            for u in roster
        }

    def _require_holders(self, owners: Iterable[int], available: frozenset[int], what: str) -> None:
        assert self.graph is not None
        for owner in sorted(owners):
            present = len(self.graph.holders(owner) & available)
            if present < self.graph.threshold:
                raise TooManyDropouts(
                    f"{what} of client {owner} needs {self.graph.threshold} of its "
                    f"{self.graph.degree + 1} share holders, only {present} remain "
                    f"(at most {self.graph.tolerated_dropouts} may drop out); no sum is released"
                )

    def route_shares(self, bundles: Iterable[EncryptedShares]) -> dict[int, RoutedShares]:
        """Round 1: forward each ciphertext to its receiver, among clients that shared."""
        self._advance(1, "route_shares")
        assert self.graph is not None
        by_sender: dict[int, EncryptedShares] = {}
        for bundle in bundles:
            if bundle.sender not in self.public_keys or bundle.sender in by_sender:
                raise ProtocolError(f"unexpected or repeated shares from client {bundle.sender}")
            if set(bundle.ciphertexts) != self.graph.neighbours[bundle.sender]:
                raise ProtocolError(f"client {bundle.sender} addressed shares to non-neighbours")
            by_sender[bundle.sender] = bundle
        self.shared = frozenset(by_sender)
        self._require_holders(self.shared, self.shared, "the secrets")
        return {
            v: RoutedShares(
                v,
                {
                    u: by_sender[u].ciphertexts[v]
                    for u in sorted(self.graph.neighbours[v] & self.shared)
                },
            )
            for v in sorted(self.shared)
        }

    def collect_masked_inputs(self, inputs: Iterable[MaskedInput]) -> UnmaskRequest:
        """Round 2: keep each ``y_u``; name survivors and dropped for round 3."""
        self._advance(2, "collect_masked_inputs")
        limit = np.uint64(self.params.encoding.modulus - 1)
        for message in inputs:
            u = message.client_id
            if u not in self.shared or u in self._masked:
                raise ProtocolError(f"unexpected or repeated masked input from client {u}")
            masked = np.asarray(message.masked)
            if masked.dtype != np.uint64 or masked.shape != (self.params.vector_length,):
                raise ProtocolError(
                    f"client {u}'s masked input must be uint64 of shape "
                    f"({self.params.vector_length},), got {masked.dtype} {masked.shape}"
                )
            if masked.size and masked.max() > limit:
                raise ProtocolError(f"client {u}'s masked input is not reduced mod 2**b")
            self._masked[u] = masked
        self.survivors = frozenset(self._masked)
        self.dropped = self.shared - self.survivors
        if not self.survivors:
            raise TooManyDropouts("no client sent a masked input; no sum is released")
        self._require_holders(self.survivors, self.survivors, "the self-mask seed")
        self._require_holders(self.dropped, self.survivors, "the mask key")
        return UnmaskRequest(self.survivors, self.dropped)

    def unmask(self, replies: Iterable[UnmaskReply]) -> np.ndarray:
        """Round 3: reconstruct, remove the masks, return the survivors' float64 sum."""
        self._advance(3, "unmask")
        assert self.graph is not None
        self_shares: dict[int, list[Share]] = {u: [] for u in self.survivors}
        key_shares: dict[int, list[Share]] = {w: [] for w in self.dropped}
        responders: set[int] = set()
        for reply in replies:
            v = reply.client_id
            if v not in self.survivors or v in responders:
                raise ProtocolError(f"unexpected or repeated unmask reply from client {v}")
            responders.add(v)
            for owners, requested, store in (
                (reply.self_mask_shares, self.survivors, self_shares),
                (reply.mask_key_shares, self.dropped, key_shares),
            ):
                for owner, share in owners.items():
                    if owner not in requested or v not in self.graph.holders(owner):
                        raise ProtocolError(f"client {v} sent a share of {owner} not asked for")
                    if share.x != share_id(v):
                        raise ProtocolError(f"client {v} sent a share with id {share.x}")
                    store[owner].append(share)
        t = self.graph.threshold
        for owner, shares in {**self_shares, **key_shares}.items():
            if len(shares) < t:
                raise TooManyDropouts(
                    f"only {len(shares)} shares of client {owner}'s secret arrived, {t} needed; "
                    "no sum is released"
                )
        encoding, length = self.params.encoding, self.params.vector_length
        total = np.zeros(length, dtype=np.uint64)
        for u in sorted(self.survivors):
            seed = shamir.reconstruct(self_shares[u], t)
            total = total + self._masked[u] - expand_mask(seed, length, encoding.modulus_bits)
        for w in sorted(self.dropped):
            private = shamir.reconstruct(key_shares[w], t)
            if (
                keys.KeyPair.from_private_bytes(private).public_bytes
                != self.public_keys[w].mask_public
            ):
                raise ProtocolError(f"the reconstructed mask key of client {w} does not match")
            self.recovered_mask_keys[w] = private
            for u in sorted(self.graph.neighbours[w] & self.survivors):
                # y_u holds client u's signed mask with w: the negation of w's own signed mask
                total = total + pairwise_mask(
                    w, private, u, self.public_keys[u].mask_public, self.params
                )
        return encoding.decode_sum(encoding.reduce(total))
