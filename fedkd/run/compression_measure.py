"""Measuring a model for the compression table: parameters, serialized size, latency, accuracy."""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from fedkd.train import as_float_tensor, evaluate

ROW_KEYS: tuple[str, ...] = (
    "method",
    "accuracy",
    "parameters",
    "size_bytes",
    "latency_ms_batch1",
    "latency_ms_batch64",
)
"""Keys of every row returned by :func:`fedkd.run.compression.compare` and :func:`measure`,
in order."""

# Layers whose weights pruning and the sparse serialization act on.
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Key suffixes of one weight in sparse_state_dict().
_MASK_SUFFIX = ".nonzero_mask_bits"
_VALUES_SUFFIX = ".nonzero_values"
_SHAPE_SUFFIX = ".dense_shape"


def stored_parameter_count(model: nn.Module, *, nonzero_only: bool = False) -> int:
    """Return the number of stored parameter elements of ``model``, quantized ones included.

    Counts ``model.parameters()`` plus the packed weight and bias of every dynamically
    quantized Linear (which are not parameters); buffers are not counted.

    Parameters
    ----------
    model : nn.Module
        Float, pruned, low-rank or :func:`fedkd.run.compression.compress_int8` model.
    nonzero_only : bool, optional
        Count only nonzero elements (for pruned models; default False).
    """
    tensors: list[Tensor] = [p.detach() for p in model.parameters()]
    for module in model.modules():
        if isinstance(module, DynamicQuantizedLinear):
            weight, bias = module._weight_bias()
            tensors.append(weight.dequantize())
            if bias is not None:
                tensors.append(bias)
    if nonzero_only:
        return sum(int(torch.count_nonzero(t)) for t in tensors)
    return sum(t.numel() for t in tensors)


def serialized_size_bytes(state: Mapping[str, Any]) -> int:
    """Return the length in bytes of ``torch.save(state)`` (e.g. a state dict), as saved.

    A ``model.state_dict()`` is saved as is, with its version ``_metadata``, exactly as a
    checkpoint would be.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def sparse_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Return ``model.state_dict()`` with every Linear/Conv weight stored in sparse form.

    A weight ``<key>`` of ``n`` elements becomes three entries:

    - ``<key>.nonzero_mask_bits``: uint8 ``(ceil(n / 8),)``, the row-major nonzero mask
      packed 8 elements per byte (``numpy.packbits``, big-endian bit order);
    - ``<key>.nonzero_values``: the nonzero elements in row-major order, original dtype;
    - ``<key>.dense_shape``: int64 shape of the weight.

    Other entries are unchanged. :func:`dense_state_dict` inverts it exactly.
    """
    weight_keys = {
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, _PRUNABLE)
    }
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key not in weight_keys:
            out[key] = value
            continue
        flat = value.detach().cpu().reshape(-1)
        mask = flat != 0
        out[key + _MASK_SUFFIX] = torch.from_numpy(np.packbits(mask.numpy()))
        out[key + _VALUES_SUFFIX] = flat[mask].clone()
        out[key + _SHAPE_SUFFIX] = torch.tensor(value.shape, dtype=torch.int64)
    return out


def dense_state_dict(sparse_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Decode a :func:`sparse_state_dict` back into a dense state dict (same key order)."""
    out: dict[str, Tensor] = {}
    for key, value in sparse_state.items():
        if key.endswith(_VALUES_SUFFIX) or key.endswith(_SHAPE_SUFFIX):
            continue
        if not key.endswith(_MASK_SUFFIX):
            out[key] = value
            continue
        weight_key = key.removesuffix(_MASK_SUFFIX)
        values = sparse_state[weight_key + _VALUES_SUFFIX]
        shape = tuple(int(d) for d in sparse_state[weight_key + _SHAPE_SUFFIX])
        mask = np.unpackbits(value.numpy(), count=math.prod(shape)).astype(bool)
        dense = torch.zeros(math.prod(shape), dtype=values.dtype)
        dense[torch.from_numpy(mask)] = values
        out[weight_key] = dense.reshape(shape)
    return out


def latency_ms(model: nn.Module, inputs: Tensor, *, repeats: int = 20, warmup: int = 3) -> float:
    """Return the median wall time in milliseconds of ``model(inputs)`` on one CPU thread.

    Runs ``warmup`` untimed passes, then ``repeats`` timed ones, in eval mode under
    :func:`torch.inference_mode` with ``torch.set_num_threads(1)``. The thread count and
    the model's train/eval mode are restored afterwards.

    Raises
    ------
    ValueError
        If ``repeats < 1`` or ``warmup < 0``.
    """
    _check_count(repeats, "repeats", minimum=1)
    _check_count(warmup, "warmup", minimum=0)
    threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(inputs)
            seconds: list[float] = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(inputs)
                seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return statistics.median(seconds) * 1000.0


def measure(
    model: nn.Module,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    method: str,
    sparse: bool = False,
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, Any]:
    """Return one :data:`ROW_KEYS` row for ``model`` on ``(test_x, test_y)``.

    Parameters
    ----------
    model : nn.Module
        Any model taking ``(B, *test_x.shape[1:])`` float32 inputs on the CPU.
    test_x, test_y : np.ndarray
        Test inputs ``(N, ...)`` and integer labels ``(N,)``.
    method : str
        Value of the row's ``method`` key.
    sparse : bool, optional
        Count only nonzero parameters and serialize :func:`sparse_state_dict` (for pruned
        models); default False counts all parameters and serializes ``state_dict()``.
    repeats, warmup : int, optional
        Passed to :func:`latency_ms` for both batch sizes.
    """
    state = sparse_state_dict(model) if sparse else model.state_dict()
    _, accuracy = evaluate(model, test_x, test_y)
    return {
        "method": method,
        "accuracy": accuracy,
        "parameters": stored_parameter_count(model, nonzero_only=sparse),
        "size_bytes": serialized_size_bytes(state),
        "latency_ms_batch1": latency_ms(
            model, _test_batch(test_x, 1), repeats=repeats, warmup=warmup
        ),
        "latency_ms_batch64": latency_ms(
            model, _test_batch(test_x, 64), repeats=repeats, warmup=warmup
        ),
    }


def _test_batch(test_x: np.ndarray, size: int) -> Tensor:
    """The first ``size`` test examples, cycling through ``test_x`` when it is shorter."""
    if len(test_x) == 0:
        raise ValueError("test_x is empty: need at least one example")
    rows = np.arange(size) % len(test_x)
    return as_float_tensor(np.asarray(test_x)[rows], torch.device("cpu"))


def _check_count(value: Any, key: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
