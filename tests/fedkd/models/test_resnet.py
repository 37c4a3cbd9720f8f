"""Tests for the ResNet-8 model (``model=resnet8``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.models import (
    ResNet8,
    build_model,
    count_parameters,
    get_weights,
    model_from_config,
    model_from_spec,
    set_weights,
)


def resnet8_parameters(in_channels: int, num_classes: int) -> int:
    """ResNet-8 (16/32/64, GroupNorm: a scale and a shift per channel) counted by hand."""
    stem = in_channels * 16 * 9 + 2 * 16
    stage1 = 2 * (16 * 16 * 9 + 2 * 16)  # identity shortcut
    stage2 = (16 * 32 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32) + (16 * 32 + 2 * 32)
    stage3 = (32 * 64 * 9 + 2 * 64) + (64 * 64 * 9 + 2 * 64) + (32 * 64 + 2 * 64)
    head = 64 * num_classes + num_classes
    return stem + stage1 + stage2 + stage3 + head


def test_parameter_counts_by_hand() -> None:
    digits = build_model("resnet8", input_shape=(1, 8, 8), num_classes=10)
    assert count_parameters(digits) == resnet8_parameters(1, 10) == 77_754
    # Global average pooling: the count does not depend on the spatial size.
    mnist = build_model("resnet8", input_shape=(1, 28, 28), num_classes=10)
    assert count_parameters(mnist) == 77_754
    cifar = build_model("resnet8", input_shape=(3, 32, 32), num_classes=10)
    assert count_parameters(cifar) == resnet8_parameters(3, 10) == 78_042


def test_structure() -> None:
    model = build_model("resnet8", input_shape=(1, 8, 8), num_classes=10)
    assert isinstance(model, ResNet8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # stem + 2 per block (3 blocks) = 7 weighted 3x3 convs + the head = 8 layers; plus two
    # 1x1 shortcut convs where the width changes.
    assert sum(c.kernel_size == (3, 3) for c in convs) == 7
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2
    assert [c.stride for c in convs if c.kernel_size == (3, 3)] == [
        (1, 1),
        (1, 1),
        (1, 1),
        (2, 2),
        (1, 1),
        (2, 2),
        (1, 1),
    ]
    assert all(c.bias is None for c in convs)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 9 and all(n.num_groups == 2 for n in norms)
    # Only float parameters in the state dict: no BatchNorm buffers to average.
    assert all(t.dtype == torch.float32 for t in model.state_dict().values())
    assert len(model.state_dict()) == len(list(model.parameters()))
    assert isinstance(model.head, nn.Linear) and model.head.in_features == 64


def test_initialisation_follows_the_reference() -> None:
    """Conv weights N(0, 2 / (k * k * out)); checked on the largest conv's sample std."""
    model = build_model("resnet8", input_shape=(1, 8, 8), num_classes=10, seed=0)
    weight = model.stages[2].conv2.weight  # 64 x 64 x 3 x 3 = 36,864 draws
    expected = math.sqrt(2.0 / (9 * 64))
    assert abs(weight.std().item() - expected) < 0.02 * expected
    assert abs(weight.mean().item()) < 0.02 * expected


@pytest.mark.parametrize(
    ("shape", "maps"),
    [
        ((1, 8, 8), [(16, 8, 8), (16, 8, 8), (32, 4, 4), (64, 2, 2)]),
        ((1, 28, 28), [(16, 28, 28), (16, 28, 28), (32, 14, 14), (64, 7, 7)]),
        ((3, 32, 32), [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ],
)
def test_forward_shapes_and_named_features(
    shape: tuple[int, ...], maps: list[tuple[int, ...]]
) -> None:
    model = build_model("resnet8", input_shape=shape, num_classes=7, seed=1)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    logits, feats = model.forward_features(x)
    assert logits.shape == (4, 7)
    assert (
        tuple(feats) == model.feature_names == ("stem", "layer1", "layer2", "layer3", "embedding")
    )
    assert [tuple(v.shape[1:]) for v in list(feats.values())[:-1]] == maps
    # The embedding is the globally averaged last stage, the head's input.
    torch.testing.assert_close(feats["embedding"], feats["layer3"].mean(dim=(2, 3)))
    torch.testing.assert_close(model.head(feats["embedding"]), logits)
    torch.testing.assert_close(model(x), logits)


def test_trains_on_a_batch_of_one() -> None:
    """GroupNorm needs no batch statistics, so one example trains (BatchNorm would refuse)."""
    model = build_model("resnet8", input_shape=(1, 8, 8), num_classes=3)
    loss = model(torch.randn(1, 1, 8, 8)).sum()
    loss.backward()
    assert model.stem[0].weight.grad is not None


def test_state_dict_round_trip() -> None:
    src = build_model("resnet8", input_shape=(1, 8, 8), num_classes=10, seed=0)
    dst = build_model("resnet8", input_shape=(1, 8, 8), num_classes=10, seed=1)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(src(x), dst(x))
    set_weights(dst, get_weights(src))
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    again = build_model("resnet8", input_shape=(1, 8, 8), num_classes=10, seed=1)
    again.load_state_dict(src.state_dict())
    torch.testing.assert_close(again(x), src(x), rtol=0, atol=0)
    rebuilt = model_from_spec(src.spec, seed=0)
    assert all(
        np.array_equal(a, b) for a, b in zip(get_weights(rebuilt), get_weights(src), strict=True)
    )


@pytest.mark.parametrize("group", ["model", "student"])
def test_config_option_builds(group: str) -> None:
    cfg = compose_config([f"{group}=resnet8"])
    model = model_from_config(cfg[group], input_shape=(1, 8, 8), num_classes=10)
    assert model.spec["options"] == {"channels": [16, 32, 64], "norm_groups": 2}
    assert count_parameters(model) == 77_754


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channels": [16, 32]}, r"model\.channels of resnet8 must list 3 widths"),
        ({"norm_groups": 3}, r"model\.norm_groups=3 must divide every width"),
        ({"norm_groups": 0}, r"model\.norm_groups must be a positive integer"),
    ],
)
def test_bad_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model("resnet8", input_shape=(1, 8, 8), num_classes=10, **options)


def test_fedavg_run_on_digits(tmp_path, in_process_run) -> None:
    """One FedAvg round with ResNet-8 clients and student on digits, on the inline grid."""
    summary = in_process_run(
        [
            "model=resnet8",
            "student=resnet8",
            "strategy=fedavg",
            "dataset=digits",
            "backend=inline",
            "num_rounds=1",
            "num_clients=2",
            "client.epochs=1",
        ],
        tmp_path / "run",
    )
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    accuracy = summary["final"]["student_accuracy"]
    assert math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0
    assert accuracy > 0.2  # above chance (0.1) after one round: it learns (0.44 when written)
