"""Tests for fedkd.distill.targets on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.distill import ensemble_accuracy, mean_targets

# 2 clients x 2 examples x 3 classes.
PROBS = np.array(
    [
        [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]],
        [[0.4, 0.5, 0.1], [0.0, 0.9, 0.1]],
    ]
)


def test_mean_targets_by_hand() -> None:
    out = mean_targets(PROBS)
    assert out.dtype == np.float32
    assert out.shape == (2, 3)
    expected = np.array([[0.5, 0.4, 0.1], [0.1, 0.55, 0.35]])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


def test_mean_targets_accepts_list() -> None:
    np.testing.assert_allclose(mean_targets([PROBS[0], PROBS[1]]), mean_targets(PROBS))


def test_mean_targets_validation() -> None:
    with pytest.raises(ValueError, match="3-D"):
        mean_targets(PROBS[0])
    with pytest.raises(ValueError, match="equal shapes"):
        mean_targets([PROBS[0], PROBS[1][:1]])
    with pytest.raises(ValueError, match="sum to 1"):
        mean_targets(PROBS * 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        mean_targets(np.array([[[1.5, -0.5]]]))


def test_ensemble_accuracy_by_hand() -> None:
    # Means: [0.5, 0.4, 0.1] -> argmax 0, [0.1, 0.55, 0.35] -> argmax 1.
    assert ensemble_accuracy(PROBS, np.array([0, 1])) == 1.0
    assert ensemble_accuracy(PROBS, np.array([0, 2])) == 0.5
    assert ensemble_accuracy(PROBS, np.array([2, 2])) == 0.0
    with pytest.raises(ValueError, match="labels"):
        ensemble_accuracy(PROBS, np.array([0, 1, 2]))
