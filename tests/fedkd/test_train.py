"""Tests for fedkd.train: local training, prediction and evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedkd.errors import ConfigError
from fedkd.models import build_model, get_weights
from fedkd.setup import LocalTraining, TrainSettings
from fedkd.train import evaluate, predict_probs, train_local


def _separable(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centers = np.array([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    x = centers[y] + rng.normal(scale=0.5, size=(n, 2))
    return x.astype(np.float32), y.astype(np.int64)


def test_train_local_fits_separable_set() -> None:
    x, y = _separable()
    model = build_model("mlp", input_shape=(2,), num_classes=3, hidden=[16], seed=0)
    loss0, acc0 = evaluate(model, x, y)
    report = train_local(model, x, y, epochs=5, batch_size=32, lr=0.05, seed=0)
    assert report.num_examples == 400
    assert report.steps == 5 * math.ceil(400 / 32)
    loss1, acc1 = evaluate(model, x, y)
    assert acc1 > 0.9
    assert loss1 < loss0
    assert report.loss < loss0
    assert acc0 < 0.9  # the untrained model does not already fit


def test_train_local_adam_and_modes() -> None:
    x, y = _separable(n=200)
    model = build_model("mlp", input_shape=(2,), num_classes=3, hidden=[8], dropout=0.1)
    model.eval()
    train_local(model, x, y, epochs=5, batch_size=20, lr=0.05, optimizer="adam", seed=1)
    assert not model.training
    assert evaluate(model, x, y)[1] > 0.9


def test_train_local_deterministic() -> None:
    x, y = _separable(n=100)

    def run(seed: int) -> list[np.ndarray]:
        model = build_model("mlp", input_shape=(2,), num_classes=3, hidden=[8], dropout=0.2)
        train_local(model, x, y, epochs=2, batch_size=16, lr=0.05, seed=seed)
        return get_weights(model)

    a, b, c = run(3), run(3), run(4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert any(not np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_train_local_takes_settings_whole_or_field_by_field() -> None:
    """A client's LocalTraining, TrainSettings and loose keywords train identically; loose
    keywords replace fields of the settings (a route with other epochs)."""
    x, y = _separable(n=100)
    start = build_model("mlp", input_shape=(2,), num_classes=3, hidden=[8]).state_dict()

    def weights(**kwargs: object) -> list[np.ndarray]:
        model = build_model("mlp", input_shape=(2,), num_classes=3, hidden=[8])
        model.load_state_dict(start)
        train_local(model, x, y, seed=5, **kwargs)  # type: ignore[arg-type]
        return get_weights(model)

    local = LocalTraining(epochs=2, batch_size=16, lr=0.05, momentum=0.5, weight_decay=0.01)
    loose = weights(epochs=2, batch_size=16, lr=0.05, momentum=0.5, weight_decay=0.01)
    for trained in (
        weights(settings=local),
        weights(settings=local.train_settings()),
        weights(settings=LocalTraining(epochs=5, batch_size=16, lr=0.05), momentum=0.5,
                weight_decay=0.01, epochs=2),
    ):  # fmt: skip
        assert all(np.array_equal(u, v) for u, v in zip(loose, trained, strict=True))
    other = weights(settings=local, epochs=1)
    assert any(not np.array_equal(u, v) for u, v in zip(loose, other, strict=True))
    assert local.train_settings(epochs=1) == TrainSettings(1, 16, 0.05, "sgd", 0.5, 0.01)
    with pytest.raises(TypeError):
        weights(settings=local, epoch=1)


def test_train_local_validation() -> None:
    x, y = _separable(n=10)
    model = build_model("mlp", input_shape=(2,), num_classes=3)
    with pytest.raises(ValueError, match="empty"):
        train_local(model, x[:0], y[:0], epochs=1, batch_size=4, lr=0.1)
    with pytest.raises(ValueError, match="lengths differ"):
        train_local(model, x, y[:-1], epochs=1, batch_size=4, lr=0.1)
    with pytest.raises(ConfigError, match=r"client\.optimizer.*'sgd', 'adam'"):
        train_local(model, x, y, epochs=1, batch_size=4, lr=0.1, optimizer="lbfgs")
    with pytest.raises(ConfigError, match=r"client\.batch_size"):
        train_local(model, x, y, epochs=1, batch_size=0, lr=0.1)
    with pytest.raises(ConfigError, match=r"client\.momentum"):
        train_local(model, x, y, settings=TrainSettings(1, 4, 0.1, momentum=-0.5))


def test_predict_probs_rows_and_mode() -> None:
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=5, seed=2)
    model.train()
    x = np.random.default_rng(0).normal(size=(37, 1, 8, 8)).astype(np.float32)
    probs = predict_probs(model, x, batch_size=10)  # several batches
    assert model.training
    assert probs.dtype == np.float32 and probs.shape == (37, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert not model.training
    predict_probs(model, x)
    assert not model.training


def test_evaluate_by_hand() -> None:
    model = build_model("mlp", input_shape=(2,), num_classes=2, hidden=[])
    head = model.head
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], dtype=np.float32)
    y = np.array([0, 1, 1])
    loss, acc = evaluate(model, x, y, batch_size=2)
    ce = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(-2)), math.log(1 + math.exp(3))]
    assert loss == pytest.approx(sum(ce) / 3, abs=1e-6)
    assert acc == pytest.approx(2 / 3)
