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

The measurements live in :mod:`fedkd.run.compression_measure` and the SVD factorization in
:mod:`fedkd.run.low_rank`; their public names are re-exported here.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from fedkd.run.compression_measure import _PRUNABLE, _check_count
from fedkd.run.compression_measure import ROW_KEYS as ROW_KEYS
from fedkd.run.compression_measure import dense_state_dict as dense_state_dict
from fedkd.run.compression_measure import latency_ms as latency_ms
from fedkd.run.compression_measure import measure as measure
from fedkd.run.compression_measure import serialized_size_bytes as serialized_size_bytes
from fedkd.run.compression_measure import sparse_state_dict as sparse_state_dict
from fedkd.run.compression_measure import stored_parameter_count as stored_parameter_count
from fedkd.run.low_rank import _check_rank
from fedkd.run.low_rank import factorize_conv as factorize_conv
from fedkd.run.low_rank import factorize_linear as factorize_linear
from fedkd.run.low_rank import max_saving_rank as max_saving_rank

logger = logging.getLogger(__name__)

DEFAULT_SPARSITIES: tuple[float, ...] = (0.5, 0.8, 0.9)
DEFAULT_RANKS: tuple[int, ...] = (4, 8, 16)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Used only when the current quantized engine cannot run (e.g. "none").
_ENGINE_FALLBACKS = ("fbgemm", "qnnpack")


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


# ----------------------------------------------------------------------------- comparison


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


def _check_sparsity(sparsity: Any) -> float:
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float))
        or not 0.0 < sparsity < 1.0
    ):
        raise ValueError(f"sparsity must be a number in (0, 1), got {sparsity!r}")
    return float(sparsity)
