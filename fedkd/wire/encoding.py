"""Communication encodings of the proxy predictions clients upload (``encoding`` config block).

A client encodes its released ``(rows, classes)`` predictions into a few named arrays; the
server decodes them back to float32 rows before it checks and aggregates anything. Decoding
is post-processing of what the client released, so it is valid under every privacy
mechanism. Encodings:

``float32`` (default)
    The rows as they are: ``proxy-probs`` (4 bytes per entry).
``float16``
    ``proxy-probs`` in half precision (2 bytes per entry); relative rounding error at most
    ``2**-11`` per entry.
``int8``
    Per-row symmetric quantization: ``proxy-probs-scale`` holds ``s = max|row| / 127``
    (float32; 1 for an all-zero row) and ``proxy-probs-q`` holds ``round(v / s)`` as int8
    (1 byte per entry plus 4 per row); the error is at most ``s / 2`` per entry.
``topk``
    The ``k`` largest entries of each row: ``proxy-probs-idx`` (their class indices, in the
    smallest unsigned type that holds ``classes - 1``) and ``proxy-probs-val`` (their values,
    float16); every other entry decodes to zero, so the mass outside the top ``k`` is lost.

Everything here is plain numpy; Flower's ``ArrayRecord`` only carries the arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkd.errors import ConfigError, FedKDError, check_block
from fedkd.wire import keys

FLOAT32, FLOAT16, INT8, TOPK = "float32", "float16", "int8", "topk"
ENCODINGS = (FLOAT32, FLOAT16, INT8, TOPK)
INT8_LEVELS = 127
#: Twice float16's unit roundoff (2**-11) and its smallest subnormal (2**-24): generous
#: bounds on the rounding error of one float16 entry, relative and absolute.
FLOAT16_RELATIVE_ERROR = 2.0**-10
FLOAT16_ABSOLUTE_ERROR = 2.0**-24


class MalformedEncoding(FedKDError, ValueError):
    """Encoded arrays that do not decode: missing, wrong shape or dtype, out-of-range
    indices, non-finite values. The message is the reply's rejection reason."""


def index_dtype(num_classes: int) -> np.dtype[Any]:
    """The smallest unsigned integer type that holds every class index ``0..num_classes-1``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


@dataclass(frozen=True)
class EncodingSpec:
    """How clients encode the proxy predictions they upload (the ``encoding`` block).

    Parameters
    ----------
    name : {"float32", "float16", "int8", "topk"}
        The encoding (default ``"float32"``: the rows as computed, bit for bit).
    k : int
        Entries kept per row by ``topk`` (default 3); must be in ``1..num_classes``.

    Examples
    --------
    >>> spec = EncodingSpec("int8")
    >>> rows = np.array([[0.5, 0.25, 0.25]], dtype=np.float32)
    >>> sorted(spec.encode(rows))
    ['proxy-probs-q', 'proxy-probs-scale']
    """

    name: str = FLOAT32
    k: int = 3

    @staticmethod
    def from_config(cfg: Mapping[str, Any] | None) -> EncodingSpec:
        """Parse and check the ``encoding`` block (``None``: float32).

        Raises
        ------
        ConfigError
            Unknown keys, a name outside :data:`ENCODINGS`, or ``k`` not an integer >= 1.
        """
        if cfg is None:
            return EncodingSpec()
        cfg = check_block(cfg, "encoding", EncodingSpec.__dataclass_fields__)
        name = cfg.get("name", FLOAT32)
        if name not in ENCODINGS:
            raise ConfigError(f"encoding.name must be one of {ENCODINGS}, got {name!r}")
        k = cfg.get("k", 3)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"encoding.k must be an integer >= 1, got {k!r}")
        return EncodingSpec(name=str(name), k=k)

    def check_classes(self, num_classes: int) -> None:
        """``encoding.k`` must be at most the dataset's class count (``topk`` only)."""
        if self.name == TOPK and self.k > num_classes:
            raise ConfigError(
                f"encoding.k={self.k} must be in 1..{num_classes} (this dataset's classes)"
            )

    def to_dict(self) -> dict[str, Any]:
        """The block as sent to clients (inside :class:`fedkd.setup.FederationSetup`)."""
        return {"name": self.name, "k": self.k}

    @property
    def lossless(self) -> bool:
        """Whether decoding gives back exactly the rows that were encoded (float32)."""
        return self.name == FLOAT32

    # ------------------------------------------------------------------ client side
    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Encode ``(rows, classes)`` values into the named arrays a client uploads.

        Parameters
        ----------
        values : np.ndarray
            The released rows (probabilities, votes, or noisy values under ``logit_dp``).

        Returns
        -------
        dict of str to np.ndarray
            Contiguous arrays keyed by their :mod:`fedkd.wire.keys` names.
        """
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.ndim != 2:
            raise ValueError(f"expected (rows, classes) values, got shape {values.shape}")
        if self.name == FLOAT32:
            return {keys.PROXY_PROBS: values}
        if self.name == FLOAT16:
            return {keys.PROXY_PROBS: values.astype(np.float16)}
        if self.name == INT8:
            peak = np.abs(values).max(axis=1, initial=0.0)
            # a non-finite row gets a non-finite scale, which the server rejects
            scale = np.where(peak == 0, 1.0, peak / INT8_LEVELS).astype(np.float32)
            with np.errstate(invalid="ignore"):
                steps = np.nan_to_num(np.rint(values / scale[:, None]), nan=0.0)
            quantized = np.clip(steps, -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
            return {keys.PROXY_PROBS_Q: quantized, keys.PROXY_PROBS_SCALE: scale}
        num_classes = values.shape[1]
        if not 1 <= self.k <= num_classes:
            raise ValueError(f"encoding.k={self.k} must be in 1..{num_classes}")
        # largest first; the stable sort breaks ties by class index, so encoding is deterministic
        kept = np.argsort(-values, axis=1, kind="stable")[:, : self.k]
        kept_values = np.take_along_axis(values, kept, axis=1).astype(np.float16)
        kept_values[~np.isfinite(values).all(axis=1)] = np.nan  # never drop a NaN unseen
        return {
            keys.PROXY_PROBS_IDX: np.ascontiguousarray(kept.astype(index_dtype(num_classes))),
            keys.PROXY_PROBS_VAL: kept_values,
        }

    # ------------------------------------------------------------------ server side
    def decode(self, arrays: Mapping[str, np.ndarray], *, shape: tuple[int, int]) -> np.ndarray:
        """Check the encoded arrays and decode them into float32 rows of ``shape``.

        Parameters
        ----------
        arrays : mapping of str to np.ndarray
            What the reply carries (other entries are ignored).
        shape : tuple of int
            The expected ``(rows, classes)``.

        Returns
        -------
        np.ndarray
            ``(rows, classes)`` float32 (float32 encoding: the uploaded array itself, any
            float dtype, as before encodings existed).

        Raises
        ------
        MalformedEncoding
            The reason the arrays cannot be decoded, naming the array.
        """
        rows, num_classes = shape
        if self.name == FLOAT32:
            values = _array(arrays, keys.PROXY_PROBS, shape, None)
            _finite(values, keys.PROXY_PROBS)
            return values
        if self.name == FLOAT16:
            values = _array(arrays, keys.PROXY_PROBS, shape, np.float16)
            _finite(values, keys.PROXY_PROBS)
            return values.astype(np.float32)
        if self.name == INT8:
            quantized = _array(arrays, keys.PROXY_PROBS_Q, shape, np.int8)
            scale = _array(arrays, keys.PROXY_PROBS_SCALE, (rows,), np.float32)
            if not (np.isfinite(scale).all() and (scale > 0).all()):
                raise MalformedEncoding(f"{keys.PROXY_PROBS_SCALE}: not finite positive floats")
            return quantized.astype(np.float32) * scale[:, None]
        indices = _array(arrays, keys.PROXY_PROBS_IDX, (rows, self.k), index_dtype(num_classes))
        kept = _array(arrays, keys.PROXY_PROBS_VAL, (rows, self.k), np.float16)
        _finite(kept, keys.PROXY_PROBS_VAL)
        if (indices >= num_classes).any():
            raise MalformedEncoding(f"{keys.PROXY_PROBS_IDX}: class index out of range")
        if self.k > 1 and (np.diff(np.sort(indices, axis=1), axis=1) == 0).any():
            raise MalformedEncoding(f"{keys.PROXY_PROBS_IDX}: a class repeated in a row")
        values = np.zeros(shape, dtype=np.float32)
        np.put_along_axis(values, indices.astype(np.intp), kept.astype(np.float32), axis=1)
        return values

    def rounding_error(self, decoded: np.ndarray) -> np.ndarray:
        """Per-row bound on the L1 norm of ``decoded - released`` that rounding can cause.

        Computed from the decoded rows alone: float16 (and ``topk``'s kept values) round each
        entry by at most ``2**-11`` of itself, int8 by at most half a step, and an honest
        int8 row's largest entry is ``127`` steps. The mass ``topk`` drops is not rounding:
        see :meth:`min_row_mass`.
        """
        rows, num_classes = decoded.shape
        if self.name == FLOAT32:
            return np.zeros(rows)
        magnitude = np.abs(decoded.astype(np.float64))
        if self.name == INT8:
            return num_classes * magnitude.max(axis=1, initial=0.0) / (2 * INT8_LEVELS)
        entries = num_classes if self.name == FLOAT16 else self.k
        return FLOAT16_RELATIVE_ERROR * magnitude.sum(axis=1) + entries * FLOAT16_ABSOLUTE_ERROR

    def min_row_mass(self, num_classes: int) -> float:
        """The least share of a probability row's mass that survives encoding: ``k / C`` for
        ``topk`` (the ``k`` largest of ``C`` entries hold at least that), else 1."""
        return self.k / num_classes if self.name == TOPK else 1.0


def _array(
    arrays: Mapping[str, np.ndarray],
    name: str,
    shape: tuple[int, ...],
    dtype: type[np.generic] | np.dtype[Any] | None,
) -> np.ndarray:
    """Array ``name`` with ``shape`` and ``dtype`` (``None``: any float), else why not."""
    if name not in arrays:
        raise MalformedEncoding(f"{name}: missing")
    values = np.asarray(arrays[name])
    if values.shape != shape:
        raise MalformedEncoding(f"{name}: shape {values.shape}, expected {shape}")
    wrong = values.dtype.kind != "f" if dtype is None else values.dtype != dtype
    if wrong:
        raise MalformedEncoding(f"{name}: wrong dtype {values.dtype}")
    return values


def _finite(values: np.ndarray, name: str) -> None:
    if not np.isfinite(values).all():
        raise MalformedEncoding(f"{name}: not finite floats")
