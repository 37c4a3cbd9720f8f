"""Exception types of the secure-aggregation core."""

from __future__ import annotations

from fedkd.errors import FedKDError


class SecAggError(FedKDError):
    """Base class for secure-aggregation failures (no sum is released)."""


class TooManyDropouts(SecAggError):
    """Fewer than ``threshold`` share holders answered for some client: the server cannot
    remove that client's masks, so it cannot release the sum."""


class DoubleMaskingViolation(SecAggError):
    """A client was asked for both the self-mask share and the mask-key share of the same
    neighbour (or for a split that contradicts an earlier request), and refused."""


class ProtocolError(SecAggError):
    """A message that does not fit the protocol state: wrong round, unknown sender, keys or
    shares that do not verify."""
