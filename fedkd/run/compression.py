"""Compare a distilled student with its teacher compressed by int8, pruning and low rank.

Knowledge distillation is one way to make a small model; post-training compression of the
teacher is the obvious baseline. :func:`compare` measures both on the same test set and
returns one row per model, ready for a results table::

    rows = compare(student, teacher, test_x, test_y, sparsities=(0.5, 0.8, 0.9), ranks=(4, 8, 16))

Rows
----
Every row has exactly the keys of :data:`ROW_KEYS`:

``method``
    ``"student"``, ``"teacher"``, ``"teacher_int8"``, ``"teacher_pruned_<P>"`` with ``P`` the
    sparsity in percent (``0.8 -> "teacher_pruned_80"``, ``0.125 -> "teacher_pruned_12.5"``)
    and ``"teacher_low_rank_<r>"`` (``"teacher_low_rank_8"``), in that order; pruned and
    low-rank rows follow the order of ``sparsities`` and ``ranks``.
``accuracy``
    Top-1 accuracy on ``(test_x, test_y)`` (:func:`fedkd.train.evaluate`).
``parameters``
    :func:`stored_parameter_count`: all parameter elements; for ``teacher_int8`` the
    packed int8 weights and float biases of the quantized Linear layers count as well (one
    per element, as before quantization); for ``teacher_pruned_*`` only the nonzero ones.
``size_bytes``
    Length of the ``torch.save`` serialization (:func:`serialized_size_bytes`):

    - ``student``, ``teacher``, ``teacher_low_rank_*``: ``model.state_dict()`` (float32);
    - ``teacher_int8``: ``model.state_dict()`` of the quantized model, whose Linear weights
      are packed int8 (1 byte each, plus a scale and zero point per layer);
    - ``teacher_pruned_*``: :func:`sparse_state_dict`, where each Linear/Conv weight is a
      bitmask of its nonzero positions (1 bit per element) plus its nonzero float32 values;
      everything else stays dense. :func:`dense_state_dict` decodes it losslessly.

    The zip container of ``torch.save`` adds a few hundred bytes per tensor, the same for
    every row.
``latency_ms_batch1``, ``latency_ms_batch64``
    :func:`latency_ms`: median wall time of one forward pass over the first 1 / 64 test
    examples (cycled when the test set is smaller), eval mode, ``torch.inference_mode()``,
    one intra-op thread, after ``warmup`` untimed passes.

Compressions
------------
:func:`compress_int8`
    Post-training dynamic int8 quantization of ``nn.Linear`` layers
    (``torch.ao.quantization.quantize_dynamic``). Conv layers stay float32, so for CNNs
    only the fully connected layers shrink. ``torch.ao.quantization`` is deprecated in
    favour of ``torchao``; its deprecation warnings are silenced here.
:func:`compress_prune`
    Global L1 (magnitude) unstructured pruning of all Linear and Conv weights
    (``torch.nn.utils.prune.global_unstructured``), made permanent with ``prune.remove``.
    Biases are not pruned. Weights stay dense tensors holding zeros; only the
    serialization is sparse, so latency does not improve.
:func:`compress_low_rank`
    Truncated SVD of each Linear (``W ~ (U_r S_r) V_r`` as two Linear layers, the bias on
    the second) and each ungrouped Conv (the weight reshaped to ``(out, in * k)``, a conv
    with ``r`` output channels then a 1x1 conv carrying the bias), wherever rank ``r``
    stores fewer parameters than the layer (:func:`max_saving_rank`); other layers stay
    unchanged.

Every ``compress_*`` function returns a deep copy in eval mode and leaves its input
untouched. Invalid arguments raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from torch.nn.utils import prune

from fedkd.train import as_float_tensor, evaluate

logger = logging.getLogger(__name__)

ROW_KEYS: tuple[str, ...] = (
    "method",
    "accuracy",
    "parameters",
    "size_bytes",
    "latency_ms_batch1",
    "latency_ms_batch64",
)
"""Keys of every row returned by :func:`compare` and :func:`measure`, in order."""

DEFAULT_SPARSITIES: tuple[float, ...] = (0.5, 0.8, 0.9)
DEFAULT_RANKS: tuple[int, ...] = (4, 8, 16)

# Layers whose weights pruning and the sparse serialization act on.
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Used only when the current quantized engine cannot run (e.g. "none").
_ENGINE_FALLBACKS = ("fbgemm", "qnnpack")
# Key suffixes of one weight in sparse_state_dict().
_MASK_SUFFIX = ".nonzero_mask_bits"
_VALUES_SUFFIX = ".nonzero_values"
_SHAPE_SUFFIX = ".dense_shape"


# ----------------------------------------------------------------------------- compression


def quantized_engine() -> str:
    """Return a quantized engine that runs on this CPU, selecting one if needed.

    Keeps ``torch.backends.quantized.engine`` when it is a supported engine other than
    ``"none"``; otherwise sets it to the first of ``"fbgemm"``, ``"qnnpack"`` found in
    ``torch.backends.quantized.supported_engines``.

    Raises
    ------
    RuntimeError
        If this torch build supports neither engine.
    """
    supported = torch.backends.quantized.supported_engines
    current = torch.backends.quantized.engine
    if current in supported and current != "none":
        return current
    for engine in _ENGINE_FALLBACKS:
        if engine in supported:
            torch.backends.quantized.engine = engine
            logger.info("quantized engine %r unusable; switched to %r", current, engine)
            return engine
    raise RuntimeError(
        f"no quantized engine for int8 compression: supported engines are {supported}, "
        f"need one of {list(_ENGINE_FALLBACKS)}"
    )


def compress_int8(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8.

    Weights are quantized per tensor once; activations are quantized on the fly at each
    forward pass. Conv layers (and everything else) stay float32.

    Parameters
    ----------
    model : nn.Module
        Float model on the CPU; not modified.

    Returns
    -------
    nn.Module
        The quantized copy, in eval mode. It runs on the CPU with the engine chosen by
        :func:`quantized_engine`.
    """
    quantized_engine()
    quantized = _eval_copy(model)
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated (successor: torchao) but still works; the
        # warnings would repeat on every call.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        torch.ao.quantization.quantize_dynamic(
            quantized, {nn.Linear}, dtype=torch.qint8, inplace=True
        )
    return quantized


def compress_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Return a copy of ``model`` with the smallest-magnitude Linear/Conv weights set to zero.

    Global L1 unstructured pruning: ``round(sparsity * n)`` of the ``n`` weight elements of
    all Linear and Conv layers together, those of smallest absolute value, become zero
    (so some layers lose more than others). Biases are kept. The pruning is made permanent
    (no ``weight_orig``/``weight_mask`` or hooks remain).

    Parameters
    ----------
    model : nn.Module
        Model to prune; not modified.
    sparsity : float
        Fraction of the Linear/Conv weights to zero, in ``(0, 1)``.

    Returns
    -------
    nn.Module
        The pruned copy, in eval mode.

    Raises
    ------
    ValueError
        If ``sparsity`` is not in ``(0, 1)`` or the model has no Linear/Conv layer.
    """
    amount = _check_sparsity(sparsity)
    pruned = _eval_copy(model)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, _PRUNABLE)]
    if not targets:
        raise ValueError("compress_prune: model has no Linear or Conv layer to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return pruned


def compress_low_rank(model: nn.Module, rank: int) -> nn.Module:
    """Return a copy of ``model`` with Linear and Conv layers replaced by rank-``rank`` factors.

    A layer is factorized only when ``rank <= max_saving_rank(layer)``, i.e. when the two
    factors store fewer parameters than the layer; other layers (and grouped convs) are
    kept. Logs a warning when no layer is factorized, since the copy then equals the model.

    Parameters
    ----------
    model : nn.Module
        Model to factorize; not modified.
    rank : int
        Rank of every factorization, >= 1.

    Returns
    -------
    nn.Module
        The factorized copy, in eval mode. See :func:`factorize_linear` and
        :func:`factorize_conv` for the replacement modules.

    Raises
    ------
    ValueError
        If ``rank`` is not an integer >= 1.
    """
    r = _check_rank(rank)
    factorized = _eval_copy(model)
    replaced = 0
    # Collect first: replacing while iterating named_modules() would visit the new factors.
    for parent, child_name, layer in list(_child_layers(factorized)):
        if isinstance(layer, nn.Linear) and r <= max_saving_rank(layer):
            setattr(parent, child_name, factorize_linear(layer, r))
            replaced += 1
        elif isinstance(layer, _CONV) and layer.groups == 1 and r <= max_saving_rank(layer):
            setattr(parent, child_name, factorize_conv(layer, r))
            replaced += 1
    if replaced == 0:
        logger.warning(
            "compress_low_rank: rank=%d saves parameters in no layer; the model is unchanged",
            r,
        )
    return factorized


def max_saving_rank(layer: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) -> int:
    """Largest rank whose factorization of ``layer`` stores fewer parameters (0 if none).

    A weight of ``out`` rows and ``fan_in = in_features`` (or ``in_channels * prod(kernel)``)
    columns has ``out * fan_in`` elements; rank ``r`` factors have ``r * (fan_in + out)``.
    Biases are the same on both sides.
    """
    out = layer.weight.shape[0]
    fan_in = layer.weight[0].numel()
    return (out * fan_in - 1) // (fan_in + out)


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Return ``Sequential(Linear(in, rank, bias=False), Linear(rank, out))`` from a truncated SVD.

    With ``W = U S V^T``, the first layer's weight is ``V_r^T`` and the second's ``U_r S_r``
    (plus the original bias), so the product is the best rank-``rank`` approximation of ``W``
    in Frobenius norm. ``rank = min(in, out)`` reproduces the layer up to float error.

    Raises
    ------
    ValueError
        If ``rank`` is not in ``[1, min(in_features, out_features)]``.
    """
    r = _check_rank(rank, limit=min(layer.weight.shape))
    left, right = _truncated_svd(layer.weight, r)
    first = nn.Linear(layer.in_features, r, bias=False)
    second = nn.Linear(r, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(right)
        second.weight.copy_(left)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize_conv(layer: nn.Conv1d | nn.Conv2d | nn.Conv3d, rank: int) -> nn.Sequential:
    """Return a conv with ``rank`` output channels followed by a 1x1 conv, from a truncated SVD.

    The weight ``(out, in, *kernel)`` is reshaped to ``(out, in * prod(kernel))`` and
    factorized as in :func:`factorize_linear`: the first conv keeps the kernel, stride,
    padding and dilation with weight ``V_r^T`` reshaped to ``(rank, in, *kernel)``; the
    second is a 1x1 conv with weight ``U_r S_r`` and the original bias.

    Raises
    ------
    ValueError
        If ``rank`` is not in ``[1, min(out, in * prod(kernel))]`` or the conv is grouped.
    """
    if layer.groups != 1:
        raise ValueError(f"factorize_conv: grouped convs are not supported, got {layer}")
    out, in_channels, *kernel = layer.weight.shape
    matrix = layer.weight.reshape(out, -1)
    r = _check_rank(rank, limit=min(matrix.shape))
    left, right = _truncated_svd(matrix, r)
    conv_type = type(layer)
    first = conv_type(
        in_channels,
        r,
        kernel_size=layer.kernel_size,  # type: ignore[arg-type]
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        dilation=layer.dilation,  # type: ignore[arg-type]
        bias=False,
        padding_mode=layer.padding_mode,
    )
    second = conv_type(r, out, kernel_size=1, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(right.reshape(r, in_channels, *kernel))
        second.weight.copy_(left.reshape(out, r, *([1] * len(kernel))))
        if layer.bias is not None and second.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


# ----------------------------------------------------------------------------- measurement


def stored_parameter_count(model: nn.Module, *, nonzero_only: bool = False) -> int:
    """Return the number of stored parameter elements of ``model``, quantized ones included.

    Counts ``model.parameters()`` plus the packed weight and bias of every dynamically
    quantized Linear (which are not parameters); buffers are not counted.

    Parameters
    ----------
    model : nn.Module
        Float, pruned, low-rank or :func:`compress_int8` model.
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


def compare(
    student: nn.Module,
    teacher: nn.Module,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    ranks: Sequence[int] = DEFAULT_RANKS,
    repeats: int = 20,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """Measure the student, the teacher and the teacher's compressed copies.

    Parameters
    ----------
    student, teacher : nn.Module
        Float models on the CPU; neither is modified.
    test_x, test_y : np.ndarray
        Test inputs ``(N, ...)`` and integer labels ``(N,)``.
    sparsities : sequence of float, optional
        One ``teacher_pruned_<percent>`` row per value in ``(0, 1)`` (default
        ``(0.5, 0.8, 0.9)``).
    ranks : sequence of int, optional
        One ``teacher_low_rank_<rank>`` row per rank >= 1 (default ``(4, 8, 16)``).
    repeats, warmup : int, optional
        Timed and untimed forward passes per latency (defaults 20 and 3).

    Returns
    -------
    list of dict
        Rows with the keys :data:`ROW_KEYS`, in the order ``student``, ``teacher``,
        ``teacher_int8``, pruned rows, low-rank rows (see the module docstring for the
        meaning and serialization of each).

    Raises
    ------
    ValueError
        For a sparsity outside ``(0, 1)``, a rank < 1, ``repeats < 1``, ``warmup < 0``, or
        two sparsities with the same method name; raised before anything is measured.
    """
    pruned_names = [pruned_method_name(s) for s in sparsities]
    low_rank_names = [low_rank_method_name(r) for r in ranks]
    for label, names in (("sparsities", pruned_names), ("ranks", low_rank_names)):
        if len(set(names)) != len(names):
            raise ValueError(f"{label} give duplicate methods: {names}")
    _check_count(repeats, "repeats", minimum=1)
    _check_count(warmup, "warmup", minimum=0)

    def row(model: nn.Module, method: str, *, sparse: bool = False) -> dict[str, Any]:
        return measure(
            model, test_x, test_y, method=method, sparse=sparse, repeats=repeats, warmup=warmup
        )

    rows = [
        row(student, "student"),
        row(teacher, "teacher"),
        row(compress_int8(teacher), "teacher_int8"),
    ]
    for sparsity, name in zip(sparsities, pruned_names, strict=True):
        rows.append(row(compress_prune(teacher, sparsity), name, sparse=True))
    for rank, name in zip(ranks, low_rank_names, strict=True):
        rows.append(row(compress_low_rank(teacher, rank), name))
    return rows


def pruned_method_name(sparsity: float) -> str:
    """``"teacher_pruned_<percent>"`` (``0.9 -> "teacher_pruned_90"``); validates ``sparsity``."""
    return f"teacher_pruned_{100 * _check_sparsity(sparsity):g}"


def low_rank_method_name(rank: int) -> str:
    """``"teacher_low_rank_<rank>"``, e.g. ``8 -> "teacher_low_rank_8"``; validates ``rank``."""
    return f"teacher_low_rank_{_check_rank(rank)}"


# ----------------------------------------------------------------------------- helpers


def _eval_copy(model: nn.Module) -> nn.Module:
    copied = copy.deepcopy(model)
    copied.eval()
    return copied


def _child_layers(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """Yield ``(parent, attribute name, child)`` for every module below ``model``."""
    for parent in model.modules():
        for name, child in parent.named_children():
            yield parent, name, child


def _truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Return ``(U_r S_r, V_r^T)`` of ``matrix`` (computed in float64, cast back)."""
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    left = u[:, :rank] * s[:rank]
    return left.to(matrix.dtype), vh[:rank].to(matrix.dtype)


def _test_batch(test_x: np.ndarray, size: int) -> Tensor:
    """The first ``size`` test examples, cycling through ``test_x`` when it is shorter."""
    if len(test_x) == 0:
        raise ValueError("test_x is empty: need at least one example")
    rows = np.arange(size) % len(test_x)
    return as_float_tensor(np.asarray(test_x)[rows], torch.device("cpu"))


def _check_sparsity(sparsity: Any) -> float:
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float))
        or not 0.0 < sparsity < 1.0
    ):
        raise ValueError(f"sparsity must be a number in (0, 1), got {sparsity!r}")
    return float(sparsity)


def _check_rank(rank: Any, *, limit: int | None = None) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if limit is not None and rank > limit:
        raise ValueError(f"rank must be <= {limit} (the smaller weight dimension), got {rank}")
    return rank


def _check_count(value: Any, key: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
