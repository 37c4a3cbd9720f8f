"""Aggregation of client probability outputs into distillation targets."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

_ROW_SUM_TOL = 1e-3


def _stack(client_probs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if not isinstance(client_probs, np.ndarray):
        arrays = [np.asarray(p) for p in client_probs]
        if not arrays:
            raise ValueError("client_probs is empty: need at least one client")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(
                "all clients' probability arrays must have equal shapes, got "
                f"{[a.shape for a in arrays]}"
            )
        client_probs = np.stack(arrays)
    if client_probs.ndim != 3:
        raise ValueError(
            "client_probs must be 3-D (K clients, N examples, C classes), got shape "
            f"{client_probs.shape}"
        )
    k, n, c = client_probs.shape
    if k == 0 or n == 0 or c == 0:
        raise ValueError(f"client_probs must have K, N, C >= 1, got shape {client_probs.shape}")
    return client_probs


def mean_targets(client_probs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Average the clients' probabilities into one ``(N, C)`` float32 target matrix.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` array, or K arrays of equal shape ``(N, C)``; each row a probability
        vector.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 mean over clients; rows are renormalised to sum to 1.

    Raises
    ------
    ValueError
        If the input is not 3-D / shapes differ, contains non-finite or negative values,
        or has rows that do not sum to 1 (within 1e-3), e.g. logits passed by mistake.
    """
    probs = _stack(client_probs).astype(np.float64, copy=False)
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("client_probs must be finite and non-negative (probabilities, not logits)")
    sums = probs.sum(axis=2)
    if np.any(np.abs(sums - 1.0) > _ROW_SUM_TOL):
        worst = float(np.max(np.abs(sums - 1.0)))
        raise ValueError(
            f"client_probs rows must sum to 1 (probabilities); max deviation {worst:.3g}"
        )
    mean = probs.mean(axis=0)
    mean /= mean.sum(axis=1, keepdims=True)
    return mean.astype(np.float32)


def ensemble_accuracy(client_probs: np.ndarray | Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy of the argmax of :func:`mean_targets` against integer ``labels`` ``(N,)``.

    Raises
    ------
    ValueError
        As :func:`mean_targets`, or if ``labels`` is not ``(N,)``.
    """
    mean = mean_targets(client_probs)
    y = np.asarray(labels)
    if y.shape != (mean.shape[0],):
        raise ValueError(f"labels must have shape ({mean.shape[0]},), got {y.shape}")
    return float(np.mean(mean.argmax(axis=1) == y))
