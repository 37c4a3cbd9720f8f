"""Mask expansion: ChaCha20 keyed by a 32-byte seed, read as ``uint64`` words mod ``2**b``.

The keystream of ChaCha20 (nonce and counter zero) is a pseudorandom generator; every seed
(a pairwise key or a self-mask seed) expands one mask per aggregation, so the fixed nonce
never encrypts two messages under one key. Words are uniform over ``2**64``, hence reduced
modulo ``2**b`` (a divisor) they are uniform over ``2**b``.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEED_BYTES = 32
_NONCE = bytes(16)  # cryptography's ChaCha20 nonce: 4-byte counter || 12-byte nonce


def expand_mask(seed: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """``length`` pseudorandom ``uint64`` values in ``[0, 2**modulus_bits)`` from ``seed``."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seeds are {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise ValueError(f"mask length must be >= 0, got {length}")
    if not 1 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must be in [1, 64], got {modulus_bits}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    words = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    if modulus_bits == 64:
        return words
    return words & np.uint64((1 << modulus_bits) - 1)
