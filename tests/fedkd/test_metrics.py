"""Balanced accuracy, ROC-AUC and the majority-class baseline, checked against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from fedkd.metrics import balanced_accuracy, binary_scores, majority_baseline, roc_auc


def _sklearn_balanced(labels: np.ndarray, predicted: np.ndarray) -> float:
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is the point
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(labels, predicted))


@pytest.mark.parametrize("seed", range(5))
def test_binary_scores_match_sklearn_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    labels = (rng.random(n) < 0.22).astype(np.int64)  # skewed, like the credit preset
    labels[:2] = (0, 1)  # both classes present
    positive = rng.random(n).astype(np.float32)
    positive[rng.random(n) < 0.3] = 0.5  # ties must count one half
    probs = np.stack([1 - positive, positive], axis=1)
    scores = binary_scores(labels, probs)
    assert scores["balanced_accuracy"] == pytest.approx(
        _sklearn_balanced(labels, probs.argmax(axis=1)), abs=1e-12
    )
    assert scores["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_matches_sklearn_with_classes_missing(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 4, size=60)  # 4 classes in the truth ...
    predicted = rng.integers(0, 6, size=60)  # ... 6 in the predictions
    assert balanced_accuracy(labels, predicted) == pytest.approx(
        _sklearn_balanced(labels, predicted), abs=1e-12
    )


def test_auc_of_known_orderings() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(4, 0.3)) == 0.5
    # one positive above one of two negatives, tied with the other: (1 + 0.5) / 2
    assert roc_auc(np.array([0, 0, 1]), np.array([0.1, 0.5, 0.5])) == 0.75


@pytest.mark.parametrize("only", [0, 1])
def test_one_class_test_set_has_no_auc(only: int) -> None:
    labels = np.full(10, only)
    probs = np.tile([0.3, 0.7], (10, 1))
    scores = binary_scores(labels, probs)
    assert scores["auc"] is None
    assert scores["balanced_accuracy"] == pytest.approx(_sklearn_balanced(labels, np.ones(10)))


@pytest.mark.parametrize(
    ("labels", "values", "match"),
    [
        (np.array([0, 1]), np.array([0.5]), "one length"),
        (np.array([], dtype=np.int64), np.array([]), "non-empty"),
        (np.array([0, 2]), np.array([0.1, 0.2]), "0/1"),
        (np.array([0, 1]), np.array([0.1, np.nan]), "finite"),
    ],
)
def test_bad_auc_input_is_refused(labels, values, match) -> None:
    with pytest.raises(ValueError, match=match):
        roc_auc(labels, values)


def test_binary_scores_need_two_probability_columns() -> None:
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        binary_scores(np.array([0, 1]), np.eye(3)[:2])


def test_majority_baseline_picks_the_training_majority_and_scores_the_test_set() -> None:
    train = np.array([0] * 78 + [1] * 22)
    test = np.array([0] * 30 + [1] * 10)
    baseline = majority_baseline(train, test, num_classes=2)
    assert baseline == {"class": 0, "accuracy": 0.75, "balanced_accuracy": 0.5, "auc": 0.5}
    # the class comes from training labels, even when the test set's majority differs
    flipped = majority_baseline(train, 1 - test, num_classes=2)
    assert flipped["class"] == 0 and flipped["accuracy"] == 0.25
    assert flipped["balanced_accuracy"] == 0.5 and flipped["auc"] == 0.5


def test_majority_baseline_of_a_multiclass_task_has_accuracy_only() -> None:
    train = np.array([2, 2, 1, 0, 2, 1])
    test = np.array([2, 0, 1, 2, 2])
    assert majority_baseline(train, test, num_classes=3) == {"class": 2, "accuracy": 0.6}
    # a tie goes to the lowest class
    assert majority_baseline(np.array([1, 0]), test, num_classes=3)["class"] == 0


def test_majority_baseline_on_a_one_class_test_set() -> None:
    baseline = majority_baseline(np.array([1, 1, 0]), np.zeros(4, np.int64), num_classes=2)
    assert baseline["class"] == 1 and baseline["accuracy"] == 0.0
    assert baseline["balanced_accuracy"] == 0.0 and baseline["auc"] is None


def test_majority_baseline_refuses_labels_outside_the_classes() -> None:
    with pytest.raises(ValueError, match="train_labels"):
        majority_baseline(np.array([0, 3]), np.array([0]), num_classes=2)
    with pytest.raises(ValueError, match="test_labels"):
        majority_baseline(np.array([0, 1]), np.array([], dtype=np.int64), num_classes=2)
