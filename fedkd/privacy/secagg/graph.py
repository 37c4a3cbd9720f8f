"""The SecAgg+ neighbour graph (Bell et al., CCS 2020): a seeded, symmetric Harary graph.

The clients that advertised keys are placed on a ring in an order drawn from the session's
seed, and each is joined to the ``ceil(k/2)`` nearest on either side: a ``2*ceil(k/2)``-
regular, symmetric graph that every client and the server derive identically from the
roster and the seed. When ``k >= n - 1`` (or the ring would close on itself) the graph is
complete, which is the original protocol of Bonawitz et al. (CCS 2017).

Threshold. A client's secrets are shared among its *closed* neighbourhood (its ``d``
neighbours and itself: ``d + 1`` holders) with threshold ``t = floor((d + 1) / 2) + 1``, a
strict majority of the holders. Majority means two disjoint sets of ``t`` holders cannot
exist, so no split of the holders can hand the server both a client's self-mask seed and
its mask key. Up to ``d + 1 - t`` holders of each client may drop out; with the complete
graph that is ``ceil(n / 2) - 1 >= floor(n / 3)`` clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def threshold_for(holders: int) -> int:
    """Strict majority of ``holders`` share holders: ``holders // 2 + 1``."""
    if holders < 1:
        raise ValueError(f"holders must be >= 1, got {holders}")
    return holders // 2 + 1


@dataclass(frozen=True)
class NeighbourGraph:
    """Who masks with whom and who holds whose shares.

    Attributes
    ----------
    neighbours
        ``client id -> frozenset of neighbour ids`` (symmetric, no self loops).
    degree
        The common degree ``d`` of every client.
    """

    neighbours: dict[int, frozenset[int]]
    degree: int

    @property
    def threshold(self) -> int:
        """Shares needed to reconstruct one client's secret (``d + 1`` holders)."""
        return threshold_for(self.degree + 1)

    @property
    def tolerated_dropouts(self) -> int:
        """Holders of one client that may drop out with its secrets still recoverable."""
        return self.degree + 1 - self.threshold

    @property
    def is_complete(self) -> bool:
        return self.degree == len(self.neighbours) - 1

    def holders(self, client_id: int) -> frozenset[int]:
        """The closed neighbourhood: ``client_id`` and its neighbours."""
        return self.neighbours[client_id] | {client_id}


def _seed_int(seed: bytes) -> int:
    return int.from_bytes(hashlib.sha256(b"fedkd-secagg-v1/graph" + seed).digest(), "big")


def neighbour_graph(client_ids: Iterable[int], degree: int, *, seed: bytes) -> NeighbourGraph:
    """The Harary-style graph of ``degree`` (rounded up to even) over ``client_ids``,
    drawn from ``seed``; complete when ``degree >= n - 1``."""
    ids = sorted(set(client_ids))
    n = len(ids)
    if n < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients, got {n}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"secagg neighbour degree must be an integer >= 1, got {degree!r}")
    half = -(-degree // 2)
    if 2 * half >= n - 1:
        everyone = frozenset(ids)
        return NeighbourGraph({u: everyone - {u} for u in ids}, degree=n - 1)
    order = np.random.default_rng(_seed_int(seed)).permutation(n)
    ring = [ids[i] for i in order]
    neighbours: dict[int, set[int]] = {u: set() for u in ids}
    for position, u in enumerate(ring):
        for step in range(1, half + 1):
            v = ring[(position + step) % n]
            neighbours[u].add(v)
            neighbours[v].add(u)
    return NeighbourGraph({u: frozenset(vs) for u, vs in neighbours.items()}, degree=2 * half)
