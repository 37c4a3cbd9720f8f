"""Tests for the cnn / cnn1d ``pool`` and ``hidden`` options and the reference CNN."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.models import build_model, count_parameters, model_from_config, model_from_spec


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over every state-dict entry's name, shape and raw bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# Reference values computed with ``state_dict_sha256`` and ``count_parameters`` on
# ``build_model(name, input_shape=shape, num_classes=10, seed=seed, **options)`` BEFORE the
# pool / hidden options were added (fedkd/models/cnn.py at the commit before, torch's CPU
# generator). The default cnn must keep its module structure, parameter order and initial
# weights, so these must never change.
DEFAULT_CNN_REFERENCE = [
    (
        "cnn",
        (1, 8, 8),
        0,
        {},
        13_706,
        "78b3d461795e51a2bc88f03d6cf439371a1199da7398b7d71cba28c1f422d80f",
    ),
    (
        "cnn",
        (1, 28, 28),
        0,
        {},
        105_866,
        "1cfe7bd12da52d8a260c5793ee2e9f114bdd32ed42367238ce9ae24e0cf4694a",
    ),
    (
        "cnn",
        (3, 32, 32),
        0,
        {},
        136_874,
        "7ecfed3e2f41ac77e00243cf6c473c1a570cf57f8cd82cdba50bc618745bf588",
    ),
    (
        "cnn1d",
        (1, 40),
        0,
        {},
        22_826,
        "c32e77d6013dd8d47159ab56b6971cd5280ee7d2cc3a7f81df08c2da92e8354b",
    ),
    (  # three blocks on 8x8: the third block does not pool (2 < 4)
        "cnn",
        (1, 8, 8),
        3,
        {"channels": [8, 16, 32], "hidden": 20},
        8_678,
        "1755bbd4f1090316d11507599c894f14ebd031ca91c3cd3910c3afb23b6b7a4d",
    ),
]

# The layer options added after the references above, spelled out at their defaults.
LAYER_DEFAULTS = {
    "kernel_size": 3,
    "stride": 1,
    "padding": 1,
    "norm": "none",
    "norm_groups": 2,
    "init": "torch",
}

# The default cnn's state dict on 8x8 inputs before the change (names and shapes, in order).
DEFAULT_CNN_LAYOUT = [
    ("blocks.0.0.weight", (16, 1, 3, 3)),
    ("blocks.0.0.bias", (16,)),
    ("blocks.1.0.weight", (32, 16, 3, 3)),
    ("blocks.1.0.bias", (32,)),
    ("fc.weight", (64, 128)),
    ("fc.bias", (64,)),
    ("head.weight", (10, 64)),
    ("head.bias", (10,)),
]


@pytest.mark.parametrize(
    ("name", "shape", "seed", "options", "num_parameters", "sha256"), DEFAULT_CNN_REFERENCE
)
def test_default_cnn_is_unchanged(
    name: str,
    shape: tuple[int, ...],
    seed: int,
    options: dict,
    num_parameters: int,
    sha256: str,
) -> None:
    model = build_model(name, input_shape=shape, num_classes=10, seed=seed, **options)
    assert count_parameters(model) == num_parameters
    assert state_dict_sha256(model) == sha256
    # Spelling the defaults out, the later layer options included, builds the same weights.
    explicit = build_model(
        name,
        input_shape=shape,
        num_classes=10,
        seed=seed,
        **{"channels": [16, 32], "hidden": 64, **options, "pool": "every", **LAYER_DEFAULTS},
    )
    assert state_dict_sha256(explicit) == sha256


def test_default_cnn_layout_is_unchanged() -> None:
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=10, seed=0)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == DEFAULT_CNN_LAYOUT
    pools = [isinstance(block[-1], nn.MaxPool2d) for block in model.blocks]
    assert pools == [True, True]


def test_reference_cnn_has_29066_parameters() -> None:
    model = build_model(
        "cnn", input_shape=(1, 8, 8), num_classes=10, channels=[32, 64], hidden=None, pool="last"
    )
    conv1 = 1 * 32 * 9 + 32  # 320
    conv2 = 32 * 64 * 9 + 64  # 18,496
    head = (64 * 4 * 4) * 10 + 10  # one 2x2 pool: 8x8 -> 4x4; 10,250
    assert count_parameters(model) == conv1 + conv2 + head == 29_066
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [
        ("blocks.0.0.weight", (32, 1, 3, 3)),
        ("blocks.0.0.bias", (32,)),
        ("blocks.1.0.weight", (64, 32, 3, 3)),
        ("blocks.1.0.bias", (64,)),
        ("head.weight", (10, 1024)),
        ("head.bias", (10,)),
    ]
    logits, feats = model.forward_features(torch.zeros(3, 1, 8, 8))
    assert logits.shape == (3, 10)
    assert [tuple(v.shape) for v in feats.values()] == [(3, 32, 8, 8), (3, 64, 4, 4), (3, 1024)]
    # No hidden layer: the embedding is the flattened last block, fed straight to the head.
    torch.testing.assert_close(feats["embedding"], feats["conv2"].flatten(1))
    torch.testing.assert_close(model.head(feats["embedding"]), logits)


@pytest.mark.parametrize("group", ["model", "student"])
def test_cnn_reference_config_builds_29066_parameters(group: str) -> None:
    cfg = compose_config([f"{group}=cnn_reference"])
    model = model_from_config(cfg[group], input_shape=(1, 8, 8), num_classes=10)
    assert model.spec["name"] == "cnn"
    assert model.spec["options"] == {
        "channels": [32, 64],
        "hidden": None,
        "pool": "last",
        **LAYER_DEFAULTS,
    }
    assert count_parameters(model) == 29_066
    again = model_from_spec(model.spec)
    assert state_dict_sha256(again) == state_dict_sha256(model)


@pytest.mark.parametrize(
    ("pool", "shapes"),
    [
        ("every", [(2, 4, 4, 4), (2, 6, 2, 2)]),
        ("last", [(2, 4, 8, 8), (2, 6, 4, 4)]),
        ("none", [(2, 4, 8, 8), (2, 6, 8, 8)]),
        ([1], [(2, 4, 4, 4), (2, 6, 4, 4)]),
        ([2, 1], [(2, 4, 4, 4), (2, 6, 2, 2)]),
        ([], [(2, 4, 8, 8), (2, 6, 8, 8)]),
    ],
)
def test_pool_option_places_the_pools(pool: object, shapes: list[tuple[int, ...]]) -> None:
    model = build_model(
        "cnn", input_shape=(1, 8, 8), num_classes=3, channels=[4, 6], hidden=5, pool=pool
    )
    _, feats = model.forward_features(torch.zeros(2, 1, 8, 8))
    assert [tuple(feats[f"conv{i}"].shape) for i in (1, 2)] == shapes
    flat = shapes[-1][1] * shapes[-1][2] * shapes[-1][3]
    assert count_parameters(model) == (1 * 4 * 9 + 4) + (4 * 6 * 9 + 6) + (flat * 5 + 5) + 18


def test_cnn1d_shares_the_options() -> None:
    model = build_model(
        "cnn1d", input_shape=(1, 40), num_classes=10, channels=[4, 8], hidden=None, pool=[2]
    )
    _, feats = model.forward_features(torch.zeros(2, 1, 40))
    assert [tuple(v.shape) for v in feats.values()] == [(2, 4, 40), (2, 8, 20), (2, 160)]
    assert count_parameters(model) == (1 * 4 * 3 + 4) + (4 * 8 * 3 + 8) + (160 * 10 + 10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool": "sometimes"}, r"model\.pool must be one of \('every', 'last', 'none'\)"),
        ({"pool": [3]}, r"model\.pool must list distinct conv indices in 1\.\.2"),
        ({"pool": [1, 1]}, r"model\.pool must list distinct conv indices"),
        ({"pool": [0]}, r"model\.pool must be a positive integer"),
        ({"pool": 2}, r"model\.pool must be one of"),
        ({"hidden": 0}, r"model\.hidden must be a positive integer"),
        # 8 -> 4 -> 2 -> 1 -> cannot pool a 1x1 map
        ({"channels": [2, 2, 2, 2], "pool": [1, 2, 3, 4]}, r"conv4 output .* too small"),
    ],
)
def test_bad_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model("cnn", input_shape=(1, 8, 8), num_classes=3, **options)
