"""Weights as arrays: the example-weighted average and a model's ArrayRecord."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord
from torch import nn


def weighted_average(
    state_dicts: list[dict[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    """Weighted mean of state dicts with identical keys/shapes (weights need not sum to 1)."""
    if not state_dicts or len(state_dicts) != len(weights):
        raise ValueError("need one weight per state dict and at least one state dict")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    averaged: dict[str, np.ndarray] = {}
    for name, first in state_dicts[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for state, weight in zip(state_dicts, weights, strict=True):
            acc += state[name].astype(np.float64) * (weight / total)
        averaged[name] = acc.astype(first.dtype)
    return averaged


def student_arrays(model: nn.Module) -> ArrayRecord:
    """The model's weights as an ArrayRecord (moved to CPU first)."""
    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})
