"""``array_values`` reads exactly what ``Array.numpy()`` reads, and falls back on anything
it does not recognise."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedkd.wire.arrays import array_values

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(DTYPES).flatmap(
        lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0))
    )
)
def test_same_values_dtype_and_shape_as_numpy(values: np.ndarray) -> None:
    array = Array(values)
    fast, reference = array_values(array), array.numpy()
    assert fast.dtype == reference.dtype and fast.shape == reference.shape
    assert fast.tobytes() == reference.tobytes()
    assert fast.flags.writeable and fast.flags.c_contiguous


def test_fortran_ordered_arrays_go_through_numpy() -> None:
    values = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    array = Array(values)
    np.testing.assert_array_equal(array_values(array), values)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["float32", "int64", "bogus"]))
def test_hostile_bytes_behave_as_numpy_does(data: bytes, dtype: str) -> None:
    """Whatever bytes arrive under a declared dtype and shape: either both readers fail,
    or both give the same array."""
    array = Array(dtype=dtype, shape=(2, 3), stype="numpy.ndarray", data=data)
    try:
        reference = array.numpy()
    except Exception as exc:
        with pytest.raises(type(exc)):
            array_values(array)
        return
    assert array_values(array).tobytes() == reference.tobytes()


def test_a_header_that_disagrees_with_the_declared_shape_is_read_by_numpy() -> None:
    """A client declaring shape (2, 2) but sending 4 floats as (4,): numpy's reading (the
    header's shape) wins, as before."""
    honest = Array(np.arange(4, dtype=np.float32))
    lying = Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=honest.data)
    assert array_values(lying).shape == lying.numpy().shape == (4,)
