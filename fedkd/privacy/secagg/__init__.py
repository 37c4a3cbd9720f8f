"""Secure aggregation core: the server learns the sum of the survivors' vectors, nothing else.

SecAgg (Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017) with the sparse neighbour graph of SecAgg+ (Bell et al., "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020). A pure library: no
Flower, Ray or Hydra; messages are dataclasses of bytes and numpy arrays.

Modules
-------
* :mod:`.fixed_point`: float arrays -> integers mod ``2**b`` (``b <= 62``) and back.
* :mod:`.shamir`: t-of-n sharing of 32-byte secrets over GF(2**521 - 1).
* :mod:`.keys`: X25519 key pairs, HKDF-SHA256 pairwise keys, ChaCha20-Poly1305 share boxes.
* :mod:`.prg`: ChaCha20 keystream expanding a 32-byte seed into a mask.
* :mod:`.graph`: the seeded Harary neighbour graph, its threshold and dropout tolerance.
* :mod:`.protocol`: :class:`SecAggClient`, :class:`SecAggServer` and the round messages.

Message flow (``n`` clients, degree ``k``, ``d = min(2*ceil(k/2), n-1)``, length ``L``)
--------------------------------------------------------------------------------------
0. advertise keys: client -> server ``(c_pk, s_pk)``; server -> client the roster and its
   ``d`` neighbours' keys. Every party derives the same graph from roster and session.
1. share keys: each client splits its self-mask seed ``b_u`` and its mask private key
   ``s_u`` into ``d + 1`` Shamir shares (its neighbours and itself), threshold
   ``t = floor((d+1)/2) + 1``; each neighbour's pair of shares travels encrypted under the
   pairwise c-key, with associated data naming (session, sender, receiver), so the server
   can neither read nor re-address it.
2. masked input: ``y_u = enc(x_u) + PRG(b_u) + sum_{v in N(u)} +-PRG(s_uv) mod 2**b``
   (``+`` when ``u < v``), over the neighbours that completed round 1.
3. unmasking: the server names survivors (sent ``y``) and dropped (shared, sent no ``y``);
   each responding client returns its share of ``b_v`` for each surviving neighbour ``v``
   and of ``s_v`` for each dropped one, and refuses (``DoubleMaskingViolation``) when one
   ``v`` is named both ways, now or across requests. The server reconstructs, subtracts
   ``PRG(b_u)`` of survivors and the survivors' pairwise masks with dropped clients, and
   decodes ``sum_{u in survivors} x_u``. If some secret has fewer than ``t`` shares it
   raises ``TooManyDropouts`` and releases nothing. Each client tolerates ``d + 1 - t``
   dropped holders; for the complete graph that is ``ceil(n/2) - 1 >= floor(n/3)``.

Threat model
------------
Supported: an honest-but-curious server (follows the protocol, reads everything it
receives and routes) colluding with up to ``t - 1`` clients of any one neighbourhood learns
nothing about the honest survivors' inputs beyond their sum (computationally, under the
X25519/HKDF/ChaCha20 assumptions): each ``y_u`` is uniform mod ``2**b`` to it. A client that
is declared dropped cannot be unmasked alone, even when its ``y`` arrives late: the server
then holds shares of its mask key, never of ``b_u`` (the honest clients refuse to give
both), and ``PRG(b_u)`` still hides ``x_u``. Majority thresholds mean no two disjoint holder
sets of size ``t`` exist.

Not protected: the sum itself, and whatever it reveals (with one survivor the sum *is* that
client's input; with few survivors or a known complement it is close to it; add DP noise for
that); the model trained on it; which clients took part and when they dropped; vector length
and value bound. Not covered: a malicious server that sends different survivor sets to
different clients (Bonawitz's consistency-check round and signatures are not implemented;
client refusal across requests and the majority threshold only limit it), malicious clients
sending out-of-bound or malformed ``y`` (no range proofs: a client can skew the sum by any
amount mod ``2**b``), Sybil clients beyond ``t - 1`` per neighbourhood, and a sparse graph
chosen adversarially (the graph is seeded by the session, which the server picks). Inputs of
clients that dropped before round 2 are simply absent from the sum; no information about
them is released beyond their keys.

Costs per client (bytes, excluding framing; ``C = 176`` bytes per encrypted share pair)
--------------------------------------------------------------------------------------
* round 0: up ``64``; down ``8 n + 64 d`` (roster and neighbours' keys);
* round 1: up ``C d``; down ``<= C d``;
* round 2: up ``8 L`` (``uint64`` words; ``ceil(b/8) L`` if packed);
* round 3: down ``8 n`` (survivor and dropped ids); up ``<= 74 (d + 1)``
  (66-byte share plus 8-byte owner id).
Computation: a client does ``2 d`` X25519 agreements, two Shamir splits at ``d + 1`` points
and ``d + 1`` mask expansions of ``L`` words; the server does one reconstruction per
survivor and dropped client and ``|survivors| + sum_{dropped w} |N(w) & survivors|`` mask
expansions. Plain aggregation costs ``4 L`` bytes up (float32): secure aggregation's
uplink is ``2 L + O(d)`` bytes more per client, and the server's work grows with dropouts.
"""

from fedkd.privacy.secagg.errors import (
    DoubleMaskingViolation,
    ProtocolError,
    SecAggError,
    TooManyDropouts,
)
from fedkd.privacy.secagg.fixed_point import FixedPointEncoding
from fedkd.privacy.secagg.graph import NeighbourGraph, neighbour_graph, threshold_for
from fedkd.privacy.secagg.protocol import (
    AdvertiseKeys,
    EncryptedShares,
    KeyBroadcast,
    MaskedInput,
    RoutedShares,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    UnmaskReply,
    UnmaskRequest,
)

__all__ = [
    "AdvertiseKeys",
    "DoubleMaskingViolation",
    "EncryptedShares",
    "FixedPointEncoding",
    "KeyBroadcast",
    "MaskedInput",
    "NeighbourGraph",
    "ProtocolError",
    "RoutedShares",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggServer",
    "TooManyDropouts",
    "UnmaskReply",
    "UnmaskRequest",
    "neighbour_graph",
    "threshold_for",
]
