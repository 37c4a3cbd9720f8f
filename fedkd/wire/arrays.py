"""Reading Flower arrays fast, with the same result as :meth:`flwr.app.Array.numpy`.

``Array.numpy()`` runs ``np.load`` on the array's bytes, which parses the ``.npy`` header
with :func:`ast.literal_eval`: most of the cost of reading a small array, and fedkd reads
every array of every reply several times (validation, decoding, aggregation). When the
header is byte for byte what numpy writes for the array's declared dtype and shape (always,
for arrays Flower made), :func:`array_values` reads the data directly; anything else (a
hostile client's bytes, another ``.npy`` version) goes through ``Array.numpy()`` as before.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from flwr.app import Array

_MAGIC = b"\x93NUMPY\x01\x00"  # format version 1.0, what np.save writes for small headers
_PREFIX = len(_MAGIC) + 2  # magic, version and the header's length (uint16)


def array_values(array: Array) -> np.ndarray:
    """``array.numpy()``: a new, writable numpy array (raises as ``numpy()`` does)."""
    data = array.data
    expected = (
        _header(str(array.dtype), tuple(array.shape)) if array.stype == "numpy.ndarray" else None
    )
    if expected is not None and isinstance(data, bytes) and data.startswith(_MAGIC):
        header, dtype, count = expected
        length = int.from_bytes(data[len(_MAGIC) : _PREFIX], "little")
        start = _PREFIX + length
        if (
            len(data) == start + count * dtype.itemsize
            and data[_PREFIX:start].rstrip(b" \n") == header
        ):
            values = np.frombuffer(data, dtype=dtype, count=count, offset=start)
            return values.reshape(tuple(array.shape)).copy()
    return array.numpy()


@functools.lru_cache(maxsize=1024)
def _header(dtype_name: str, shape: tuple[int, ...]) -> tuple[bytes, np.dtype, int] | None:
    """The ``.npy`` header dict numpy writes for a C-ordered array of this dtype and shape
    (without its padding), the dtype and the element count; None for dtypes it cannot be."""
    try:
        dtype = np.dtype(dtype_name)
    except TypeError:
        return None
    if dtype.hasobject or not all(isinstance(n, int) and n >= 0 for n in shape):
        return None
    descr = np.lib.format.dtype_to_descr(dtype)
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    return text.encode("latin1"), dtype, math.prod(shape)
