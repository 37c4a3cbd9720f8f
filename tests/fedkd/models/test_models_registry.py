"""Tests for fedkd.models: registry, architectures, seeding and weight exchange."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd.errors import ConfigError
from fedkd.models import (
    MODEL_NAMES,
    build_model,
    count_parameters,
    get_weights,
    model_from_spec,
    model_size_bytes,
    set_weights,
)

CASES = [
    ("mlp", (30,)),
    ("mlp", (1, 8, 8)),
    ("cnn", (1, 8, 8)),
    ("cnn", (3, 32, 32)),
    ("cnn1d", (1, 40)),
    ("resnet8", (1, 8, 8)),
    ("resnet8", (3, 32, 32)),
]


def test_registry_names() -> None:
    assert MODEL_NAMES == ("mlp", "cnn", "cnn1d", "resnet8")


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_forward_and_features(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, input_shape=shape, num_classes=7, seed=1)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    logits = model(x)
    assert logits.shape == (5, 7)
    logits2, feats = model.forward_features(x)
    assert torch.equal(logits, logits2)
    assert tuple(feats) == model.feature_names
    assert model.feature_names[-1] == "embedding"
    emb = feats["embedding"]
    assert emb.shape[0] == 5 and emb.ndim == 2
    # The embedding is the penultimate vector: the head applied to it gives the logits.
    head = model.head
    assert isinstance(head, torch.nn.Linear)
    torch.testing.assert_close(head(emb), logits)


def test_feature_names_per_architecture() -> None:
    assert build_model("mlp", input_shape=(30,), num_classes=3).feature_names == (
        "hidden1",
        "hidden2",
        "embedding",
    )
    cnn = build_model("cnn", input_shape=(1, 8, 8), num_classes=3)
    assert cnn.feature_names == ("conv1", "conv2", "embedding")
    _, feats = cnn.forward_features(torch.zeros(2, 1, 8, 8))
    assert feats["conv1"].shape == (2, 16, 4, 4)
    assert feats["conv2"].shape == (2, 32, 2, 2)
    assert feats["embedding"].shape == (2, 64)
    cnn1d = build_model("cnn1d", input_shape=(1, 40), num_classes=3, channels=[4, 8], hidden=12)
    _, feats = cnn1d.forward_features(torch.zeros(2, 1, 40))
    assert [tuple(v.shape) for v in feats.values()] == [(2, 4, 20), (2, 8, 10), (2, 12)]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_seeding(name: str, shape: tuple[int, ...]) -> None:
    a = get_weights(build_model(name, input_shape=shape, num_classes=4, seed=3))
    b = get_weights(build_model(name, input_shape=shape, num_classes=4, seed=3))
    c = get_weights(build_model(name, input_shape=shape, num_classes=4, seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_build_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("cnn", input_shape=(1, 8, 8), num_classes=10, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_count_parameters_by_hand() -> None:
    model = build_model("mlp", input_shape=(3,), num_classes=2, hidden=[4])
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2 + 2  # 26
    assert model_size_bytes(model) == 26 * 4
    linear = build_model("mlp", input_shape=(2, 3), num_classes=5, hidden=[])
    assert count_parameters(linear) == 6 * 5 + 5
    assert linear.feature_names == ("embedding",)


def test_count_parameters_cnn_by_hand() -> None:
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, channels=[2, 4], hidden=5)
    conv1 = 1 * 2 * 9 + 2
    conv2 = 2 * 4 * 9 + 4
    fc = (4 * 2 * 2) * 5 + 5  # 8 -> pool 4 -> pool 2
    head = 5 * 3 + 3
    assert count_parameters(model) == conv1 + conv2 + fc + head


def test_get_set_weights_roundtrip() -> None:
    src = build_model("cnn1d", input_shape=(1, 40), num_classes=10, seed=0)
    dst = build_model("cnn1d", input_shape=(1, 40), num_classes=10, seed=1)
    weights = get_weights(src)
    assert all(w.dtype == np.float32 for w in weights)
    assert [w.shape for w in weights] == [tuple(t.shape) for t in src.state_dict().values()]
    set_weights(dst, weights)
    x = torch.randn(4, 1, 40)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    # get_weights returns copies, not views.
    weights[0][...] = 0.0
    assert not torch.all(src.state_dict()[next(iter(src.state_dict()))] == 0)


def test_set_weights_mismatch() -> None:
    model = build_model("mlp", input_shape=(3,), num_classes=2, hidden=[4])
    weights = get_weights(model)
    with pytest.raises(ValueError, match="expected 4 weight arrays"):
        set_weights(model, weights[:-1])
    bad = [*weights[:-1], np.zeros(3, dtype=np.float32)]
    with pytest.raises(ValueError, match="shape mismatch"):
        set_weights(model, bad)


def test_spec_rebuild() -> None:
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, channels=[4, 6], seed=5)
    assert model.spec["name"] == "cnn"
    assert model.spec["options"] == {
        "channels": [4, 6],
        "hidden": 64,
        "pool": "every",
        "kernel_size": 3,
        "stride": 1,
        "padding": 1,
        "norm": "none",
        "norm_groups": 2,
        "init": "torch",
    }
    again = model_from_spec(model.spec, seed=5)
    assert all(
        np.array_equal(a, b) for a, b in zip(get_weights(model), get_weights(again), strict=True)
    )


@pytest.mark.parametrize(
    ("name", "shape"),
    [("cnn", (30,)), ("cnn", (1, 40)), ("cnn1d", (1, 8, 8)), ("resnet8", (1, 40))],
)
def test_wrong_rank(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=f"model.name='{name}'"):
        build_model(name, input_shape=shape, num_classes=10)


def test_unknown_name_and_option() -> None:
    with pytest.raises(ConfigError, match=r"model\.name.*'mlp', 'cnn', 'cnn1d'.*resnet"):
        build_model("resnet", input_shape=(30,), num_classes=10)
    with pytest.raises(ConfigError, match=r"model\.widht.*allowed options"):
        build_model("mlp", input_shape=(30,), num_classes=10, widht=3)


def test_bad_option_values() -> None:
    with pytest.raises(ConfigError, match=r"model\.dropout"):
        build_model("mlp", input_shape=(30,), num_classes=10, dropout=1.5)
    with pytest.raises(ConfigError, match=r"model\.channels"):
        build_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[16, 0])
    with pytest.raises(ConfigError, match=r"model\.hidden"):
        build_model("cnn1d", input_shape=(1, 40), num_classes=10, hidden=-1)
    with pytest.raises(ConfigError, match=r"model\.num_classes"):
        build_model("mlp", input_shape=(30,), num_classes=0)
