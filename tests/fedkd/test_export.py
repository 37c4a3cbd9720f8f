"""Tests for fedkd.run.export: TorchScript/ONNX files that reproduce the student."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedkd.models import build_model
from fedkd.run.export import (
    ONNX_FILENAME,
    TORCHSCRIPT_FILENAME,
    ExportMismatchError,
    export_student,
)

ARCHITECTURES: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "mlp": ((12,), {"hidden": [32, 16]}),
    "cnn": ((1, 8, 8), {"channels": [4, 8], "hidden": 16}),
    "cnn1d": ((2, 16), {"channels": [4, 8], "hidden": 16}),
}
HAS_ONNX = importlib.util.find_spec("onnx") is not None


def _model(name: str) -> nn.Module:
    shape, options = ARCHITECTURES[name]
    return build_model(name, input_shape=shape, num_classes=5, seed=0, **options)


def _input(name: str, batch: int, seed: int = 1) -> torch.Tensor:
    shape, _ = ARCHITECTURES[name]
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_torchscript_reproduces_student(name: str, tmp_path: Path) -> None:
    model = _model(name)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = export_student(model, _input(name, 1), tmp_path / "export")

    path = tmp_path / "export" / TORCHSCRIPT_FILENAME
    assert result["torchscript"]["path"] == str(path)
    assert result["torchscript"]["checked_with"] == "torch.jit.load"
    assert 0 <= result["torchscript"]["max_abs_diff"] <= 1e-5
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # Independent check on a batch size the export never saw.
    loaded = torch.jit.load(str(path))
    x = _input(name, 9, seed=7)
    model.eval()
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    if not HAS_ONNX:
        assert result["onnx"] == {"skipped": "onnx not installed"}
        assert not (tmp_path / "export" / ONNX_FILENAME).exists()


@pytest.mark.skipif(not HAS_ONNX, reason="onnx not installed")
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_onnx_reproduces_student(name: str, tmp_path: Path) -> None:
    result = export_student(_model(name), _input(name, 2), tmp_path)

    assert result["onnx"]["path"] == str(tmp_path / ONNX_FILENAME)
    assert (tmp_path / ONNX_FILENAME).stat().st_size > 0
    if importlib.util.find_spec("onnxruntime") is None:
        assert result["onnx"] == {
            "path": str(tmp_path / ONNX_FILENAME),
            "max_abs_diff": None,
            "checked_with": "onnx.checker",
        }
    else:
        assert result["onnx"]["checked_with"] == "onnxruntime"
        assert 0 <= result["onnx"]["max_abs_diff"] <= 1e-5


def test_mismatching_torchscript_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = torch.jit.load

    class Shifted(nn.Module):
        """The loaded module with its outputs shifted, as a broken export would be."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + 1e-3

    monkeypatch.setattr(torch.jit, "load", lambda path: Shifted(real_load(path)))
    with pytest.raises(ExportMismatchError, match="torchscript") as caught:
        export_student(_model("mlp"), _input("mlp", 4), tmp_path)
    assert isinstance(caught.value, RuntimeError)
    assert caught.value.export_format == "torchscript"
    assert caught.value.max_abs_diff == pytest.approx(1e-3, rel=1e-2)


def test_wrong_output_shape_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = torch.jit.load

    def load_flattened(path: str) -> nn.Module:
        return nn.Sequential(real_load(path), nn.Flatten(0))

    monkeypatch.setattr(torch.jit, "load", load_flattened)
    with pytest.raises(ExportMismatchError, match=r"torchscript export .* output shape"):
        export_student(_model("mlp"), _input("mlp", 4), tmp_path)


@pytest.mark.parametrize("example", [torch.zeros(0, 12), torch.tensor(1.0), [[0.0] * 12]])
def test_bad_example_input_raises(example: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="example_input"):
        export_student(_model("mlp"), example, tmp_path)
