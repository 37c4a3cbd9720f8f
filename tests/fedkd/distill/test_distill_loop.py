"""Tests for fedkd.distill.loop on a toy teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd.distill import DistillReport, KDLoss, agreement, distill
from fedkd.errors import ConfigError
from fedkd.models import build_model, get_weights


def _toy(n: int = 512, d: int = 10, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, c)) * 2.0
    logits = x @ w
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return x, probs.astype(np.float32)


def _run(seed: int = 0, **kwargs: object) -> tuple[torch.nn.Module, DistillReport]:
    x, teacher = _toy()
    model = build_model("mlp", input_shape=(10,), num_classes=4, seed=1, hidden=[32])
    args: dict = {"loss": KDLoss(temperature=2.0), "epochs": 8, "batch_size": 64, "lr": 0.01}
    args.update(kwargs)
    report = distill(model, x, teacher, seed=seed, **args)
    return model, report


def test_distill_reduces_loss_and_raises_agreement() -> None:
    x, teacher = _toy()
    before = agreement(
        build_model("mlp", input_shape=(10,), num_classes=4, seed=1, hidden=[32]), x, teacher
    )
    model, report = _run()
    assert report.steps == 8 * 8
    assert len(report.epoch_losses) == 8
    assert report.epoch_losses[-1] < 0.5 * report.epoch_losses[0]
    after = agreement(model, x, teacher)
    assert after > 0.9
    assert after > before + 0.3


def test_distill_deterministic_with_seed() -> None:
    a, ra = _run(seed=5, epochs=2)
    b, rb = _run(seed=5, epochs=2)
    c, _ = _run(seed=6, epochs=2)
    assert ra == rb
    assert all(np.array_equal(u, v) for u, v in zip(get_weights(a), get_weights(b), strict=True))
    assert any(
        not np.array_equal(u, v) for u, v in zip(get_weights(a), get_weights(c), strict=True)
    )


def test_distill_with_labels_and_sgd() -> None:
    x, teacher = _toy()
    labels = teacher.argmax(axis=1)
    model = build_model("mlp", input_shape=(10,), num_classes=4, seed=1, hidden=[32])
    model.eval()
    report = distill(
        model,
        x,
        teacher,
        loss=KDLoss(temperature=2.0, alpha=0.5),
        proxy_y=labels,
        epochs=5,
        batch_size=100,
        lr=0.05,
        optimizer="sgd",
    )
    assert report.steps == 5 * 6  # ceil(512 / 100) = 6 batches per epoch
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    assert not model.training  # mode restored
    assert agreement(model, x, teacher) > 0.85


def test_distill_validation() -> None:
    x, teacher = _toy(n=16)
    model = build_model("mlp", input_shape=(10,), num_classes=4)
    common = {"loss": KDLoss(), "epochs": 1, "batch_size": 4, "lr": 0.01}
    with pytest.raises(ConfigError, match=r"distill\.optimizer.*'sgd', 'adam'"):
        distill(model, x, teacher, optimizer="rmsprop", **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"distill\.epochs"):
        distill(model, x, teacher, **{**common, "epochs": 0})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"distill\.lr"):
        distill(model, x, teacher, **{**common, "lr": -1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="teacher_probs"):
        distill(model, x, teacher[:-1], **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        distill(model, x[:0], teacher[:0], **common)  # type: ignore[arg-type]


def test_agreement_by_hand() -> None:
    # A linear model with identity weights: argmax(student) = argmax(x).
    model = build_model("mlp", input_shape=(3,), num_classes=3, hidden=[])
    head = model.head
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
        head.bias.zero_()
    x = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [3, 0, 0]], dtype=np.float32)
    teacher = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    assert agreement(model, x, teacher) == 0.5
