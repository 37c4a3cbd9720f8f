"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2**521 - 1).

The Mersenne prime ``p = 2**521 - 1`` exceeds ``2**256``, so a 32-byte secret is one field
element and one share is one field element (66 bytes). A share is the point
``(x, f(x))`` of a random polynomial ``f`` of degree ``t - 1`` with ``f(0) = secret``;
any ``t`` shares give ``f(0)`` by Lagrange interpolation, and any ``t - 1`` shares are
independent of the secret (uniform field elements). Share ids ``x`` are positive integers
below ``p``; the protocol uses ``client_id + 1``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fedkd.privacy.secagg.errors import SecAggError

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)

RandomBytes = Callable[[int], bytes]


class NotEnoughShares(SecAggError, ValueError):
    """Fewer than ``threshold`` distinct shares were given for a reconstruction."""


@dataclass(frozen=True)
class Share:
    """One point ``(x, y)`` of a sharing polynomial; ``0 < x < p`` and ``0 <= y < p``."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not 0 < self.x < PRIME:
            raise ValueError(f"share id x must be in [1, p), got {self.x}")
        if not 0 <= self.y < PRIME:
            raise ValueError("share value y must be a field element in [0, p)")

    def value_bytes(self) -> bytes:
        """``y`` as 66 big-endian bytes."""
        return self.y.to_bytes(SHARE_BYTES, "big")


def random_field_element(rng: RandomBytes = os.urandom) -> int:
    """A uniform element of GF(p) by rejection sampling 521-bit integers."""
    while True:
        candidate = int.from_bytes(rng(SHARE_BYTES), "big") & PRIME
        if candidate < PRIME:
            return candidate


def split(
    secret: bytes, share_ids: Iterable[int], threshold: int, *, rng: RandomBytes = os.urandom
) -> dict[int, Share]:
    """Shares of the 32-byte ``secret``, one per id in ``share_ids``, any ``threshold`` of
    which reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"Shamir secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    ids = sorted(set(share_ids))
    if not 1 <= threshold <= len(ids):
        raise ValueError(f"threshold must be in [1, {len(ids)}] (the share count), got {threshold}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [random_field_element(rng) for _ in range(threshold - 1)]
    shares: dict[int, Share] = {}
    for x in ids:
        if not 0 < x < PRIME:
            raise ValueError(f"share ids must be in [1, p), got {x}")
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares[x] = Share(x, y)
    return shares


def reconstruct(shares: Iterable[Share], threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares with distinct ids (the first
    ``threshold`` by id are used); ``NotEnoughShares`` when fewer are given."""
    by_id = {share.x: share for share in shares}
    if len(by_id) < threshold:
        raise NotEnoughShares(
            f"Shamir reconstruction needs {threshold} distinct shares, got {len(by_id)}"
        )
    points = [by_id[x] for x in sorted(by_id)[:threshold]]
    secret = 0
    for i, point in enumerate(points):
        numerator, denominator = 1, 1
        for j, other in enumerate(points):
            if i != j:
                numerator = numerator * (-other.x) % PRIME
                denominator = denominator * (point.x - other.x) % PRIME
        secret = (secret + point.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise SecAggError("Shamir shares are inconsistent: the secret exceeds 32 bytes")
    return secret.to_bytes(SECRET_BYTES, "big")
