"""Watching distillation: validation agreement per epoch, early stopping, best weights kept."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedkd.distill import KDLoss, distill
from fedkd.models import build_model


def _setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    to_class_0 = np.tile(np.array([[0.97, 0.01, 0.01, 0.01]], np.float32), (40, 1))
    to_class_1 = np.tile(np.array([[0.01, 0.97, 0.01, 0.01]], np.float32), (10, 1))
    return x, to_class_0, x[:10], to_class_1


def _model():
    return build_model("mlp", input_shape=(5,), num_classes=4, seed=1, hidden=[8])


KW = {"loss": KDLoss(), "batch_size": 8, "lr": 0.05, "seed": 3}


def _distill_fresh(x: np.ndarray, targets: np.ndarray, **options: Any):
    """A fresh _model distilled on ``targets`` with the shared settings; the model and report."""
    model = _model()
    return model, distill(model, x, targets, **options, **KW)


def test_stops_when_validation_agreement_stalls_and_keeps_the_best_epoch() -> None:
    x, train_targets, val_x, val_targets = _setup()
    model, report = _distill_fresh(
        x, train_targets, epochs=10, validation_x=val_x, validation_targets=val_targets, patience=2
    )
    # Training pulls everything to class 0 while validation wants class 1: agreement is 0
    # from epoch 1 on, so epochs 2 and 3 are stale and training stops after epoch 3.
    assert report.validation_agreement == (0.0, 0.0, 0.0)
    assert len(report.epoch_losses) == 3 and report.stopped_early
    assert report.best_epoch == 1
    # The model holds epoch 1's weights: the same as a fresh one-epoch run.
    reference, _ = _distill_fresh(x, train_targets, epochs=1)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_validation_without_patience_only_records_the_curve() -> None:
    x, train_targets, _, _ = _setup()
    _, report = _distill_fresh(
        x, train_targets, epochs=4, validation_x=x[:10], validation_targets=train_targets[:10]
    )
    assert len(report.validation_agreement) == 4 and not report.stopped_early
    assert report.validation_agreement[-1] == 1.0  # learned class 0
    assert 1 <= report.best_epoch <= 4


def test_no_validation_no_curve_and_patience_needs_validation() -> None:
    x, train_targets, _, _ = _setup()
    _, report = _distill_fresh(x, train_targets, epochs=2)
    assert report.validation_agreement == () and report.best_epoch == 0
    with pytest.raises(ValueError, match="validation"):
        distill(_model(), x, train_targets, epochs=2, patience=1, **KW)
