"""Test-set scores beyond accuracy: balanced accuracy and ROC-AUC of binary tasks, and the
majority-class baseline a binary task's accuracy must be read against.

Plain numpy (scikit-learn's metrics take seconds to import on 2 cores); the tests check
every function against :func:`sklearn.metrics.balanced_accuracy_score` and
:func:`sklearn.metrics.roc_auc_score`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in ``labels`` (scikit-learn's
    ``balanced_accuracy_score``: a predicted class absent from ``labels`` adds no term).

    Raises
    ------
    ValueError
        If the arrays are empty, not 1-D or of different lengths.
    """
    y, p = _check_pair(labels, predicted, "predicted")
    recalls = [float(np.mean(p[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls))


def roc_auc(labels: np.ndarray, positive_scores: np.ndarray) -> float | None:
    """ROC-AUC of ``positive_scores`` for class 1 of the 0/1 ``labels`` (ties count one
    half, as in scikit-learn's ``roc_auc_score``); None when only one class is present,
    where the AUC is undefined.

    Computed as the Mann-Whitney statistic over average ranks: the probability that a
    random positive scores above a random negative.

    Raises
    ------
    ValueError
        If the arrays are empty, not 1-D or of different lengths, labels are not 0/1, or a
        score is not finite.
    """
    y, scores = _check_pair(labels, positive_scores, "positive_scores")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError(f"labels must be 0/1, got values {np.unique(y).tolist()}")
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("positive_scores must be finite (found NaN or inf)")
    positives = int(np.sum(y == 1))
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct score: its tied block's first rank plus half the
    # block's spread.
    first_rank = np.cumsum(counts) - counts + 1
    ranks = (first_rank + (counts - 1) / 2.0)[inverse]
    rank_sum = float(np.sum(ranks[y == 1]))
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def binary_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """``balanced_accuracy`` of the predicted class (argmax, as accuracy uses) and ``auc``
    of the class-1 probability, for a binary task's ``(N, 2)`` probability rows.

    Raises
    ------
    ValueError
        If ``probs`` is not ``(N, 2)`` or does not match ``labels``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError(f"binary_scores needs (N, 2) probabilities, got shape {probs.shape}")
    return {
        "balanced_accuracy": balanced_accuracy(labels, probs.argmax(axis=1)),
        "auc": roc_auc(labels, probs[:, 1]),
    }


def majority_baseline(
    train_labels: np.ndarray, test_labels: np.ndarray, *, num_classes: int
) -> dict[str, Any]:
    """Always predicting the most frequent class of ``train_labels`` (the lowest class on a
    tie), scored on ``test_labels``: ``class`` and ``accuracy``, and for a binary task also
    ``balanced_accuracy`` and ``auc`` (of a constant score: 0.5 when both classes are in
    the test set, else None).

    The class is chosen from training labels only, so the baseline never sees the test set.

    Raises
    ------
    ValueError
        If either label array is empty or a label is outside ``0..num_classes-1``.
    """
    train = np.asarray(train_labels).astype(np.int64)
    test = np.asarray(test_labels).astype(np.int64)
    for name, labels in (("train_labels", train), ("test_labels", test)):
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array, got shape {labels.shape}")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}")
    majority = int(np.argmax(np.bincount(train, minlength=num_classes)))
    predicted = np.full(len(test), majority)
    baseline: dict[str, Any] = {
        "class": majority,
        "accuracy": float(np.mean(predicted == test)),
    }
    if num_classes == 2:
        baseline["balanced_accuracy"] = balanced_accuracy(test, predicted)
        baseline["auc"] = roc_auc(test, predicted.astype(np.float64))
    return baseline


def _check_pair(labels: np.ndarray, values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    y, v = np.asarray(labels), np.asarray(values)
    if y.ndim != 1 or v.ndim != 1:
        raise ValueError(f"labels and {name} must be 1-D, got shapes {y.shape} and {v.shape}")
    if len(y) != len(v) or len(y) == 0:
        raise ValueError(
            f"labels and {name} must be non-empty and of one length, got {len(y)} and {len(v)}"
        )
    return y, v
