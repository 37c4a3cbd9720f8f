"""Export a trained student to TorchScript and ONNX, and check the files reproduce it.

:func:`export_student` writes, into ``out_dir``:

- ``student.torchscript.pt`` (always): ``torch.jit.trace`` of the model in eval mode,
  loaded back with ``torch.jit.load`` and compared with the eager model;
- ``student.onnx`` (when the ``onnx`` package is importable): ``torch.onnx.export`` with
  a dynamic batch axis (input ``"input"``, output ``"logits"``). It is compared with the
  eager model through ``onnxruntime`` when that is importable; otherwise it is only
  validated by ``onnx.checker`` and the outputs are *not* compared.

``torch.jit`` is deprecated in torch 2.13 in favour of ``torch.export`` (it still works and
emits deprecation warnings); ``student.torchscript.pt`` loads with ``torch.jit.load``
without the fedkd code. The ONNX export uses the default ``dynamo=True`` exporter when
``onnxscript`` is importable, else the TorchScript-based one (``dynamo=False``), which
needs only ``onnx``.

Each check runs the example input and a second, seeded random batch of another batch
size. A file whose outputs differ from the eager model's beyond the tolerance raises
:class:`ExportMismatchError`. The returned dict, one entry per format, is JSON-ready::

    {
        "torchscript": {"path": ".../student.torchscript.pt", "max_abs_diff": 2.4e-07,
                        "checked_with": "torch.jit.load"},
        "onnx": {"path": ".../student.onnx", "max_abs_diff": 4.8e-07,
                 "checked_with": "onnxruntime"},
        # or {"path": ..., "max_abs_diff": None, "checked_with": "onnx.checker"}
        # or {"skipped": "onnx not installed"}
    }
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedkd.errors import FedKDError

logger = logging.getLogger(__name__)

TORCHSCRIPT_FILENAME = "student.torchscript.pt"
ONNX_FILENAME = "student.onnx"

# Extra rows of the second check batch, so it also exercises a batch size other than the
# example's (the ONNX batch axis is dynamic; a trace that baked the size in would fail).
_EXTRA_CHECK_ROWS = 3


class ExportMismatchError(FedKDError, RuntimeError):
    """An exported file's outputs differ from the eager model's beyond the tolerance.

    Attributes
    ----------
    export_format : str
        ``"torchscript"`` or ``"onnx"``.
    max_abs_diff : float
        Largest absolute difference between the file's and the eager model's outputs
        (``inf`` when their shapes differ).
    """

    def __init__(self, export_format: str, detail: str, *, max_abs_diff: float) -> None:
        super().__init__(f"{export_format} export does not reproduce the eager model: {detail}")
        self.export_format = export_format
        self.max_abs_diff = max_abs_diff


def export_student(
    model: nn.Module,
    example_input: Tensor,
    out_dir: str | Path,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Write ``model`` as TorchScript (and ONNX when available) and verify both files.

    Parameters
    ----------
    model : nn.Module
        CPU model mapping ``(B, ...)`` float inputs to one output tensor (e.g. logits).
        Exported in eval mode; its train/eval mode is restored and its weights untouched.
    example_input : Tensor
        A batch ``(B, ...)`` with ``B >= 1`` used for tracing and for the first check.
    out_dir : str or Path
        Directory for the files; created if missing, existing files are overwritten.
    atol, rtol : float, optional
        Tolerance of the ``torch.allclose`` output checks (defaults 1e-5, 1e-4).
    seed : int, optional
        Seed of the second check batch, ``B + 3`` standard normal rows.

    Returns
    -------
    dict
        ``{"torchscript": {...}, "onnx": {...}}`` as in the module docstring.

    Raises
    ------
    ValueError
        If ``example_input`` is not a tensor with a non-empty batch dimension.
    ExportMismatchError
        If a written file's outputs differ from the eager model's (message names the format).
    """
    if not isinstance(example_input, Tensor) or example_input.dim() < 1:
        raise ValueError(f"example_input must be a batched tensor, got {example_input!r}")
    if example_input.shape[0] < 1:
        raise ValueError("example_input must hold at least one example (batch size 0 given)")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    example = example_input.detach().float()
    generator = torch.Generator().manual_seed(seed)
    check_shape = (example.shape[0] + _EXTRA_CHECK_ROWS, *example.shape[1:])
    inputs = [example, torch.randn(check_shape, generator=generator)]

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = [model(x) for x in inputs]
        check = _Check(inputs, expected, atol=atol, rtol=rtol)
        result = {
            "torchscript": _export_torchscript(model, check, directory / TORCHSCRIPT_FILENAME),
            "onnx": _export_onnx(model, check, directory / ONNX_FILENAME),
        }
    finally:
        model.train(was_training)
    logger.debug("exported student to %s: %s", directory, result)
    return result


@dataclass(frozen=True)
class _Check:
    """What an exported file must reproduce: the eager outputs on the check inputs."""

    inputs: list[Tensor]
    expected: list[Tensor]
    atol: float
    rtol: float

    def result(
        self, export_format: str, path: Path, outputs: list[Tensor], checked_with: str
    ) -> dict[str, Any]:
        """The format's entry of the result; ExportMismatchError unless ``outputs`` match."""
        diff = _check_outputs(export_format, outputs, self.expected, atol=self.atol, rtol=self.rtol)
        return {"path": str(path), "max_abs_diff": diff, "checked_with": checked_with}


def _export_torchscript(model: nn.Module, check: _Check, path: Path) -> dict[str, Any]:
    traced = torch.jit.trace(model, check.inputs[0])
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        outputs = [loaded(x) for x in check.inputs]
    return check.result("torchscript", path, outputs, "torch.jit.load")


def _export_onnx(model: nn.Module, check: _Check, path: Path) -> dict[str, Any]:
    if importlib.util.find_spec("onnx") is None:
        return {"skipped": "onnx not installed"}
    # The default (dynamo) exporter needs onnxscript; the TorchScript-based one only onnx.
    dynamo = importlib.util.find_spec("onnxscript") is not None
    batch_axis: dict[str, Any] = (
        {"dynamic_shapes": ({0: torch.export.Dim("batch")},), "external_data": False}
        if dynamo
        else {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
    )
    # Export from the larger check batch: torch.export specializes a batch of size 1 to a
    # constant, which would defeat the dynamic batch axis.
    torch.onnx.export(
        model,
        (check.inputs[1],),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamo=dynamo,
        **batch_axis,
    )
    if importlib.util.find_spec("onnxruntime") is None:
        onnx = importlib.import_module("onnx")
        onnx.checker.check_model(str(path))
        logger.warning(
            "onnxruntime not installed: %s checked with onnx.checker only; outputs not compared",
            path,
        )
        return {"path": str(path), "max_abs_diff": None, "checked_with": "onnx.checker"}
    onnxruntime = importlib.import_module("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [
        torch.from_numpy(np.asarray(session.run(None, {"input": x.numpy()})[0]))
        for x in check.inputs
    ]
    return check.result("onnx", path, outputs, "onnxruntime")


def _check_outputs(
    export_format: str,
    outputs: list[Tensor],
    expected: list[Tensor],
    *,
    atol: float,
    rtol: float,
) -> float:
    """Largest abs difference over all batches; ExportMismatchError unless all are close."""
    diff = 0.0
    close = True
    for got, want in zip(outputs, expected, strict=True):
        if got.shape != want.shape:
            raise ExportMismatchError(
                export_format,
                f"output shape {tuple(got.shape)}, expected {tuple(want.shape)}",
                max_abs_diff=float("inf"),
            )
        diff = max(diff, float((got.float() - want.float()).abs().max()))
        close = close and torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol)
    if not close:
        raise ExportMismatchError(
            export_format,
            f"max abs diff {diff:.3g} exceeds atol={atol:g}, rtol={rtol:g}",
            max_abs_diff=diff,
        )
    return diff
