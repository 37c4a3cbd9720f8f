"""Key agreement (X25519 + HKDF-SHA256) and authenticated encryption (ChaCha20-Poly1305).

Each client holds two X25519 key pairs per aggregation: the *c-keys* encrypt the Shamir
shares it sends to its neighbours, the *s-keys* derive its pairwise mask seeds. A pairwise
key is ``HKDF-SHA256(X25519(sk_u, pk_v), info=purpose || session)``, so both ends derive
the same 32 bytes, and keys of different purposes or sessions are independent.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedkd.privacy.secagg.errors import ProtocolError
from fedkd.privacy.secagg.shamir import SHARE_BYTES, RandomBytes

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_DOMAIN = b"fedkd-secagg-v1/"
MASK_PURPOSE = b"mask"
CIPHER_PURPOSE = b"cipher"


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``private_bytes`` is the raw 32-byte scalar (what is shared)."""

    private_bytes: bytes
    public_bytes: bytes

    @classmethod
    def generate(cls, rng: RandomBytes = os.urandom) -> KeyPair:
        return cls.from_private_bytes(rng(KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> KeyPair:
        if len(private_bytes) != KEY_BYTES:
            raise ValueError(f"X25519 private keys are {KEY_BYTES} bytes, got {len(private_bytes)}")
        private = X25519PrivateKey.from_private_bytes(private_bytes)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private_bytes=private_bytes, public_bytes=public)


def agree(
    private_bytes: bytes, peer_public_bytes: bytes, *, purpose: bytes, session: bytes
) -> bytes:
    """The 32-byte pairwise key ``HKDF(X25519(private, peer_public))`` for ``purpose``
    (:data:`MASK_PURPOSE` or :data:`CIPHER_PURPOSE`) in ``session``; symmetric in the pair."""
    if len(peer_public_bytes) != KEY_BYTES:
        raise ProtocolError(
            f"X25519 public keys are {KEY_BYTES} bytes, got {len(peer_public_bytes)}"
        )
    private = X25519PrivateKey.from_private_bytes(private_bytes)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public_bytes))
    except ValueError as error:  # an all-zero shared secret: a small-order public key
        raise ProtocolError(f"X25519 agreement failed: {error}") from error
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_DOMAIN + purpose + session
    ).derive(shared)


def _associated_data(session: bytes, sender: int, receiver: int) -> bytes:
    return _DOMAIN + b"shares" + session + struct.pack(">QQ", sender, receiver)


def _plaintext(sender: int, receiver: int, self_mask_share: int, mask_key_share: int) -> bytes:
    return (
        struct.pack(">QQ", sender, receiver)
        + self_mask_share.to_bytes(SHARE_BYTES, "big")
        + mask_key_share.to_bytes(SHARE_BYTES, "big")
    )


#: bytes of one encrypted share bundle: nonce, two ids, two shares, Poly1305 tag
CIPHERTEXT_BYTES = NONCE_BYTES + 16 + 2 * SHARE_BYTES + TAG_BYTES


def encrypt_shares(
    key: bytes,
    *,
    session: bytes,
    sender: int,
    receiver: int,
    self_mask_share: int,
    mask_key_share: int,
    rng: RandomBytes = os.urandom,
) -> bytes:
    """``nonce || ChaCha20-Poly1305(key, (sender, receiver, shares), ad=(session, sender,
    receiver))``: the server that routes it can neither read it nor re-address it."""
    nonce = rng(NONCE_BYTES)
    sealed = ChaCha20Poly1305(key).encrypt(
        nonce,
        _plaintext(sender, receiver, self_mask_share, mask_key_share),
        _associated_data(session, sender, receiver),
    )
    return nonce + sealed


def decrypt_shares(
    key: bytes, ciphertext: bytes, *, session: bytes, sender: int, receiver: int
) -> tuple[int, int]:
    """``(self_mask_share, mask_key_share)`` from :func:`encrypt_shares`'s output, or
    ``ProtocolError`` when it was altered, re-addressed or is from another session."""
    if len(ciphertext) != CIPHERTEXT_BYTES:
        raise ProtocolError(
            f"share ciphertext from {sender} to {receiver} has {len(ciphertext)} bytes, "
            f"expected {CIPHERTEXT_BYTES}"
        )
    try:
        plain = ChaCha20Poly1305(key).decrypt(
            ciphertext[:NONCE_BYTES],
            ciphertext[NONCE_BYTES:],
            _associated_data(session, sender, receiver),
        )
    except InvalidTag as error:
        raise ProtocolError(
            f"share ciphertext from {sender} to {receiver} does not authenticate "
            "(altered, re-addressed or from another session)"
        ) from error
    claimed = struct.unpack(">QQ", plain[:16])
    if claimed != (sender, receiver):
        raise ProtocolError(f"share ciphertext names {claimed}, routed as {(sender, receiver)}")
    self_mask_share = int.from_bytes(plain[16 : 16 + SHARE_BYTES], "big")
    mask_key_share = int.from_bytes(plain[16 + SHARE_BYTES :], "big")
    return self_mask_share, mask_key_share
