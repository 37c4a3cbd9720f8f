"""Fixed-point encoding of float arrays into integers modulo 2**b for masked summation.

A value ``x`` with ``|x| <= bound`` becomes ``q = round(x * 2**frac_bits)``, stored as
``q mod 2**b`` in ``uint64``. The modulus ``2**b`` is the smallest power of two such that the
sum of ``num_clients`` encoded values, read as a signed integer in ``[-2**(b-1), 2**(b-1))``,
cannot wrap: ``2**(b-1) > num_clients * (floor(bound * 2**frac_bits) + 1)``. ``b`` must be
at most 62 so that every sum fits in ``uint64`` arithmetic and every signed value in
``int64``.

Precision: each value is rounded to the nearest multiple of ``2**-frac_bits`` (error at most
``2**-(frac_bits+1)``), so the decoded sum of ``n`` values is within ``n / 2**(frac_bits+1)``
of the exact float sum (plus float64 rounding of the result, relative ``2**-53``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_MODULUS_BITS = 62


@dataclass(frozen=True)
class FixedPointEncoding:
    """Encoding parameters shared by all clients and the server of one aggregation.

    Parameters
    ----------
    bound
        Declared bound on ``|value|``; a value beyond it is refused (``ValueError``).
    num_clients
        The most clients whose encoded values are summed.
    frac_bits
        Fractional bits (scale ``2**frac_bits``); default 24, i.e. a per-value error of at
        most ``3e-8``.
    """

    bound: float
    num_clients: int
    frac_bits: int = 24

    def __post_init__(self) -> None:
        if isinstance(self.bound, bool) or not isinstance(self.bound, int | float):
            raise ValueError(f"fixed-point bound must be a number, got {self.bound!r}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"fixed-point bound must be finite and > 0, got {self.bound!r}")
        if isinstance(self.num_clients, bool) or not isinstance(self.num_clients, int):
            raise ValueError(f"num_clients must be an integer, got {self.num_clients!r}")
        if self.num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {self.num_clients}")
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int):
            raise ValueError(f"frac_bits must be an integer, got {self.frac_bits!r}")
        if not 0 <= self.frac_bits <= MAX_MODULUS_BITS:
            raise ValueError(f"frac_bits must be in [0, {MAX_MODULUS_BITS}], got {self.frac_bits}")
        if self.modulus_bits > MAX_MODULUS_BITS:
            raise ValueError(
                f"the sum of num_clients={self.num_clients} values of |value| <= "
                f"bound={self.bound} at frac_bits={self.frac_bits} needs a modulus of "
                f"2**{self.modulus_bits}, above 2**{MAX_MODULUS_BITS}: lower the bound, "
                "the number of clients or frac_bits"
            )

    @property
    def scale(self) -> int:
        """``2**frac_bits``."""
        return 1 << self.frac_bits

    @property
    def max_abs_sum(self) -> int:
        """The largest ``|sum of encoded integers|`` the modulus must represent."""
        return self.num_clients * (math.floor(self.bound * self.scale) + 1)

    @property
    def modulus_bits(self) -> int:
        """``b``: the smallest with ``2**(b-1) > max_abs_sum``."""
        return self.max_abs_sum.bit_length() + 1

    @property
    def modulus(self) -> int:
        """``2**b``."""
        return 1 << self.modulus_bits

    @property
    def mask(self) -> np.uint64:
        """``2**b - 1`` as ``uint64``: ``value & mask`` reduces modulo ``2**b``."""
        return np.uint64(self.modulus - 1)

    @property
    def max_sum_error(self) -> float:
        """Worst-case ``|decoded sum - float sum|`` from rounding: ``n / 2**(frac_bits+1)``."""
        return self.num_clients / float(1 << (self.frac_bits + 1))

    def encode(self, values: np.ndarray) -> np.ndarray:
        """``round(values * 2**frac_bits) mod 2**b`` as a flat ``uint64`` array.

        Raises ``ValueError`` naming the bound when a value is not finite or exceeds it.
        """
        array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"fixed-point encoding takes float arrays, got dtype {array.dtype}")
        flat = array.astype(np.float64, copy=False).ravel()
        if not np.all(np.isfinite(flat)):
            raise ValueError("fixed-point encoding refuses NaN or infinite values")
        largest = float(np.max(np.abs(flat))) if flat.size else 0.0
        if largest > self.bound:
            raise ValueError(
                f"a value of magnitude {largest!r} exceeds the declared fixed-point "
                f"bound={self.bound}; clip the values or raise the bound"
            )
        quantised = np.rint(flat * self.scale).astype(np.int64)
        return quantised.view(np.uint64) & self.mask

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """``values mod 2**b`` (``uint64`` arithmetic wraps modulo ``2**64``, a multiple)."""
        return np.asarray(values, dtype=np.uint64) & self.mask

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """The float64 value of a sum of encodings (taken modulo ``2**b``, read as signed)."""
        reduced = self.reduce(total)
        half = np.uint64(1 << (self.modulus_bits - 1))
        signed = reduced.astype(np.int64)
        signed = np.where(reduced >= half, signed - np.int64(self.modulus), signed)
        return signed.astype(np.float64) / float(self.scale)
