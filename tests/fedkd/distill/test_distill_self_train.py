"""Born-again generations and their config checks."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.distill.self_train import born_again, check_born_again
from fedkd.errors import ConfigError
from fedkd.models import build_model, get_weights
from fedkd.setup import TrainSettings
from fedkd.train import evaluate, train_local


def _trained() -> tuple[object, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = build_model("mlp", input_shape=(6,), num_classes=2, seed=0, hidden=[16])
    train_local(model, x, y, settings=TrainSettings(epochs=10, batch_size=32, lr=0.05))
    return model, x, y


def _generation(generations: int, seed: int = 0) -> tuple[list[np.ndarray], float]:
    model, x, y = _trained()
    born_again(
        model,
        x,
        y,
        generations=generations,
        temperature=2.0,
        alpha=0.5,
        settings=TrainSettings(epochs=10, batch_size=32, lr=0.05, optimizer="sgd"),
        seed=seed,
    )
    return get_weights(model), evaluate(model, x, y)[1]


def test_born_again_retrains_from_scratch_and_keeps_accuracy() -> None:
    model, x, y = _trained()
    start, accuracy = get_weights(model), evaluate(model, x, y)[1]
    weights, new_accuracy = _generation(1)
    assert any(not np.array_equal(a, b) for a, b in zip(start, weights, strict=True))
    assert new_accuracy > 0.9 and accuracy > 0.9
    again, _ = _generation(1)
    assert all(np.array_equal(a, b) for a, b in zip(weights, again, strict=True))
    unchanged, _ = _generation(0)
    assert all(np.array_equal(a, b) for a, b in zip(start, unchanged, strict=True))


def test_check_born_again_defaults_and_errors() -> None:
    assert check_born_again(None) is None
    assert check_born_again({"generations": 2}) == {
        "generations": 2,
        "temperature": 1.0,
        "alpha": 0.5,
    }
    with pytest.raises(ConfigError, match=r"client\.born_again\.temperature"):
        check_born_again({"temperature": 0})
    with pytest.raises(ConfigError, match=r"client\.born_again\.generations"):
        check_born_again({"generations": -1})
    with pytest.raises(ConfigError, match=r"client\.born_again\.gens"):
        check_born_again({"gens": 1})
