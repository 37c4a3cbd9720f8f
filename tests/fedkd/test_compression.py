"""Tests for fedkd.run.compression: int8, pruning, low rank and the comparison rows."""

from __future__ import annotations

import io
import logging
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from fedkd.models import build_model
from fedkd.run.compression import (
    ROW_KEYS,
    compare,
    compress_int8,
    compress_low_rank,
    compress_prune,
    dense_state_dict,
    factorize_conv,
    factorize_linear,
    latency_ms,
    max_saving_rank,
    quantized_engine,
    sparse_state_dict,
)
from fedkd.train import train_local

NUM_CLASSES = 4
ARCHITECTURES: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "mlp": ((12,), {"hidden": [32, 16]}),
    "cnn": ((1, 8, 8), {"channels": [4, 8], "hidden": 16}),
    "cnn1d": ((2, 16), {"channels": [4, 8], "hidden": 16}),
}


def _model(name: str, seed: int = 0) -> nn.Module:
    shape, options = ARCHITECTURES[name]
    return build_model(name, input_shape=shape, num_classes=NUM_CLASSES, seed=seed, **options)


def _data(name: str, n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by the argmax of a fixed random projection (learnable)."""
    shape, _ = ARCHITECTURES[name]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    projection = rng.normal(size=(math.prod(shape), NUM_CLASSES))
    y = (x.reshape(n, -1) @ projection).argmax(axis=1).astype(np.int64)
    return x, y


def _logits(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x))


def _state_elements(model: nn.Module, *, nonzero_only: bool = False) -> int:
    """Parameter elements counted from the state dict, unpacking quantized (weight, bias)."""
    total = 0
    for key, value in model.state_dict().items():
        if key.endswith((".scale", ".zero_point")) or not isinstance(value, (tuple, torch.Tensor)):
            continue  # quantization metadata, not parameters
        tensors = value if isinstance(value, tuple) else (value,)
        for t in tensors:
            if t is None:
                continue
            t = t.dequantize() if t.is_quantized else t
            total += int(torch.count_nonzero(t)) if nonzero_only else t.numel()
    return total


def _saved_bytes(state: dict[str, Any]) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return len(buffer.getvalue())


def _prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    return [
        m.weight.detach()
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ----------------------------------------------------------------------------- compare()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_compare_rows_match_independent_measurements(name: str) -> None:
    x, y = _data(name)
    teacher, student = _model(name, seed=0), _model(name, seed=1)
    train_local(teacher, x, y, epochs=3, batch_size=16, lr=0.05, seed=0)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    rows = compare(student, teacher, x, y, sparsities=(0.5, 0.9), ranks=(2, 4), repeats=2)

    # The compressions are deterministic, so rebuilding them gives the measured models: one
    # row each, in this order.
    models = {
        "student": student,
        "teacher": teacher,
        "teacher_int8": compress_int8(teacher),
        "teacher_pruned_50": compress_prune(teacher, 0.5),
        "teacher_pruned_90": compress_prune(teacher, 0.9),
        "teacher_low_rank_2": compress_low_rank(teacher, 2),
        "teacher_low_rank_4": compress_low_rank(teacher, 4),
    }
    assert [r["method"] for r in rows] == list(models)
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert row["latency_ms_batch1"] > 0
        assert row["latency_ms_batch64"] > 0
        model = models[row["method"]]
        pruned = row["method"].startswith("teacher_pruned")
        accuracy = float((_logits(model, x).argmax(dim=1).numpy() == y).mean())
        state = sparse_state_dict(model) if pruned else model.state_dict()
        assert row["accuracy"] == pytest.approx(accuracy), row["method"]
        assert row["parameters"] == _state_elements(model, nonzero_only=pruned), row["method"]
        assert row["size_bytes"] == _saved_bytes(state), row["method"]
    by_method = {r["method"]: r for r in rows}
    assert by_method["teacher_int8"]["parameters"] == by_method["teacher"]["parameters"]
    assert by_method["teacher_int8"]["size_bytes"] < by_method["teacher"]["size_bytes"]
    assert by_method["teacher_low_rank_2"]["parameters"] < by_method["teacher"]["parameters"]
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsities": (0.5, 1.0)}, "sparsity"),
        ({"sparsities": (0.0,)}, "sparsity"),
        ({"sparsities": (0.5, 0.5)}, "sparsities"),
        ({"ranks": (0,)}, "rank"),
        ({"ranks": (2.5,)}, "rank"),
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
    ],
)
def test_compare_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    x, y = _data("mlp", n=8)
    with pytest.raises(ValueError, match=match):
        compare(_model("mlp"), _model("mlp"), x, y, **kwargs)


# ----------------------------------------------------------------------------- int8


def test_quantized_engine_is_supported() -> None:
    engine = quantized_engine()
    assert engine in torch.backends.quantized.supported_engines
    assert engine != "none"


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_int8_quantizes_linear_layers_only_and_stays_close(name: str) -> None:
    model = _model(name)
    x, _ = _data(name, n=32)
    quantized = compress_int8(model)

    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    num_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(isinstance(m, DynamicQuantizedLinear) for m in quantized.modules()) == num_linear
    convs = [m for m in quantized.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert all(m.weight.dtype == torch.float32 for m in convs)
    assert len(convs) == (0 if name == "mlp" else 2)

    float_logits, int8_logits = _logits(model, x), _logits(quantized, x)
    diff = (float_logits - int8_logits).abs().max()
    assert 0 < diff <= 0.05 * float_logits.abs().max()
    assert isinstance(model.head, nn.Linear)  # input model left float


# ----------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_prune_reaches_global_sparsity(name: str, sparsity: float) -> None:
    model = _model(name)
    reference = _model(name)
    pruned = compress_prune(model, sparsity)

    weights = _prunable_weights(pruned)
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(sparsity * total)
    # Global magnitude pruning: every surviving weight is at least as large as every pruned one.
    original = torch.cat([w.flatten() for w in _prunable_weights(model)])
    kept = torch.cat([w.flatten() for w in weights]) != 0
    assert original[kept].abs().min() >= original[~kept].abs().max()
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    _assert_same_state(model, reference)


def test_sparse_state_dict_round_trips_and_stores_only_nonzeros() -> None:
    pruned = compress_prune(_model("cnn"), 0.8)
    sparse = sparse_state_dict(pruned)

    for key, weight in pruned.state_dict().items():
        if key.endswith(".weight"):
            assert key not in sparse
            assert sparse[key + ".nonzero_mask_bits"].dtype == torch.uint8
            assert sparse[key + ".nonzero_mask_bits"].numel() == math.ceil(weight.numel() / 8)
            assert sparse[key + ".nonzero_values"].numel() == int(torch.count_nonzero(weight))
        else:
            assert torch.equal(sparse[key], weight)
    decoded = dense_state_dict(sparse)
    assert list(decoded) == list(pruned.state_dict())
    for key, value in pruned.state_dict().items():
        assert torch.equal(decoded[key], value), key
    assert _saved_bytes(sparse) < _saved_bytes(pruned.state_dict())


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_prune_rejects_bad_sparsity(sparsity: Any) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        compress_prune(_model("mlp"), sparsity)


# ----------------------------------------------------------------------------- low rank


def test_low_rank_mlp_parameters_by_hand() -> None:
    # Layers 12->32, 32->16, 16->4; max saving ranks (384-1)//44=8, (512-1)//48=10, 63//20=3.
    model = _model("mlp")
    assert [max_saving_rank(m) for m in model.modules() if isinstance(m, nn.Linear)] == [8, 10, 3]
    factorized = compress_low_rank(model, 4)
    # 4*(12+32)+32 + 4*(32+16)+16 + (16*4+4): the head is kept because 4 > 3.
    assert _state_elements(factorized) == 208 + 208 + 68 < _state_elements(model) == 1012
    assert isinstance(factorized.head, nn.Linear)
    assert isinstance(factorized.layers[0], nn.Sequential)


@pytest.mark.parametrize("name", ["cnn", "cnn1d"])
def test_low_rank_factorizes_convs_and_shrinks(name: str) -> None:
    model = _model(name)
    reference = _model(name)
    factorized = compress_low_rank(model, 2)
    # conv2 (8 out, fan_in 4*k) saves at rank 2; the factor pair replaces it.
    second_conv = factorized.blocks[1][0]
    assert isinstance(second_conv, nn.Sequential)
    assert second_conv[0].out_channels == 2
    assert all(k == 1 for k in second_conv[1].kernel_size)
    assert _state_elements(factorized) < _state_elements(model)
    x, _ = _data(name, n=5)
    assert _logits(factorized, x).shape == (5, NUM_CLASSES)
    _assert_same_state(model, reference)


def test_low_rank_keeps_model_when_rank_saves_nothing(caplog: pytest.LogCaptureFixture) -> None:
    model = _model("mlp")
    x, _ = _data("mlp", n=8)
    with caplog.at_level(logging.WARNING, logger="fedkd.run.compression"):
        factorized = compress_low_rank(model, 11)
    assert "saves parameters in no layer" in caplog.text
    _assert_same_state(model, factorized)
    assert torch.equal(_logits(model, x), _logits(factorized, x))


def test_factorize_linear_error_is_the_discarded_singular_values() -> None:
    layer = nn.Linear(20, 12)
    singular_values = np.linalg.svd(layer.weight.detach().double().numpy(), compute_uv=False)
    for rank in (1, 5, 12):
        first, second = factorize_linear(layer, rank)
        effective = (second.weight @ first.weight).detach().double().numpy()
        error = np.linalg.norm(layer.weight.detach().double().numpy() - effective)
        assert error == pytest.approx(np.sqrt((singular_values[rank:] ** 2).sum()), abs=1e-5)
    x = torch.randn(7, 20)
    with torch.no_grad():  # full rank reproduces the layer
        assert torch.allclose(factorize_linear(layer, 12)(x), layer(x), atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1),
        nn.Conv2d(2, 5, kernel_size=(3, 1), dilation=2, padding=(2, 0)),
        nn.Conv1d(4, 6, kernel_size=5, padding=2),
    ],
)
def test_factorize_conv_matches_rank_r_weight(layer: nn.Conv1d | nn.Conv2d) -> None:
    spatial = (9, 9) if isinstance(layer, nn.Conv2d) else (11,)
    x = torch.randn(2, layer.in_channels, *spatial)
    conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
    weight = layer.weight.detach().double().numpy()
    u, s, vh = np.linalg.svd(weight.reshape(weight.shape[0], -1), full_matrices=False)
    full = min(u.shape[0], vh.shape[1])
    for rank in (1, full):
        approx = ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(weight.shape)
        with torch.no_grad():
            expected = conv(
                x,
                torch.from_numpy(approx).float(),
                layer.bias,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
            )
            assert torch.allclose(factorize_conv(layer, rank)(x), expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(factorize_conv(layer, full)(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("rank", [0, -1, 1.5, True])
def test_low_rank_rejects_bad_rank(rank: Any) -> None:
    with pytest.raises(ValueError, match="rank"):
        compress_low_rank(_model("mlp"), rank)


def test_factorize_rejects_rank_above_matrix_rank() -> None:
    with pytest.raises(ValueError, match="rank must be <= 4"):
        factorize_linear(nn.Linear(4, 9), 5)


# ----------------------------------------------------------------------------- latency


def test_latency_is_positive_and_restores_threads_and_mode() -> None:
    model = _model("cnn")
    model.train()
    threads = torch.get_num_threads()
    x, _ = _data("cnn", n=4)
    assert latency_ms(model, torch.from_numpy(x), repeats=3, warmup=1) > 0
    assert torch.get_num_threads() == threads
    assert model.training
    with pytest.raises(ValueError, match="repeats"):
        latency_ms(model, torch.from_numpy(x), repeats=0)
