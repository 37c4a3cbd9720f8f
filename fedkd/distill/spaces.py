"""Where a mean teacher is averaged: the clients' logits, their tempered probabilities, or
their probabilities.

Methods that average their clients into one teacher differ in *what* they average, and
the difference is large under label skew (issue 19: swapping only this rule took an
independent FedDF from 81.4 % to 26.9 % on digits):

- ``logits``: ``t = softmax(sum_k w_k z_k / T)``, the mean of the clients' logits, softened
  afterwards by the distillation loss at its temperature ``T``. FedDF (Lin et al. 2020,
  eq. in Algorithm 1) and FedMD (Li & Wang 2019, the "consensus" of class scores). Clients
  share probabilities ``p_k = softmax(z_k)``, and ``log p_k = z_k - logsumexp(z_k)``
  differs from ``z_k`` by a per-row constant that the softmax removes, so the mean of the
  logits is computed from probabilities exactly (up to float32 underflow of ``p``, floored
  at the resolution of the rows: the smallest normal float32, or float16's step for
  rows uploaded as float16; int8 and top-k rows zero the small probabilities and are
  refused).
- ``tempered_probs``: ``t_T = sum_k w_k softmax(z_k / T)``, the mean of the clients'
  probabilities at the loss's temperature, used as the softened teacher itself (the loss
  must not soften it again: :attr:`fedkd.distill.KDLoss.teacher_temperature`).
- ``probs``: ``t = sum_k w_k p_k`` at ``T = 1``, softened afterwards by the loss. fedkd's
  rule before issue 19, and the space of every other teacher rule (median, trimmed mean,
  ERA, ...), which are defined on probabilities.

The weights ``w_k`` are uniform (``aggregation=mean``) or proportional to the clients'
training-set sizes (``aggregation=size_weighted``); the other rules exist in probability
space only.

Config: ``strategy.teacher_space`` (FedDF and FedMD: ``logits``; DS-FL: ``probs``, ERA
averages probabilities in its paper).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedkd.distill.target_registry import _num_examples, check_probs, teacher_targets
from fedkd.errors import ConfigError

__all__ = [
    "FLOAT16_FLOOR",
    "FLOAT32_FLOOR",
    "MEAN_RULES",
    "TEACHER_SPACES",
    "check_teacher_space",
    "space_targets",
]

TEACHER_SPACES = ("logits", "tempered_probs", "probs")
#: Teacher rules that are a weighted mean over clients, and so exist in every space.
MEAN_RULES = ("mean", "size_weighted")
#: The smallest normal float32: softmax outputs that underflowed read as this.
FLOAT32_FLOOR = float(np.finfo(np.float32).tiny)
#: The smallest float16 step (rows uploaded as float16 lose everything below it).
FLOAT16_FLOOR = 2.0**-24


def check_teacher_space(space: str, rule: str, *, spaces: Sequence[str] = TEACHER_SPACES) -> str:
    """``space`` if it is one of ``spaces`` and can hold the teacher rule ``rule``.

    Raises
    ------
    ConfigError
        An unknown space, or a space other than ``probs`` with a rule that is not a mean.
    """
    if space not in spaces:
        raise ConfigError(f"strategy.teacher_space must be one of {tuple(spaces)}, got {space!r}")
    if space != "probs" and rule not in MEAN_RULES:
        raise ConfigError(
            f"aggregation={rule} combines probabilities; strategy.teacher_space={space} "
            f"averages in another space and works with aggregation={' or '.join(MEAN_RULES)}: "
            "set strategy.teacher_space=probs to use this rule"
        )
    return space


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    out = np.exp(scores)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def space_targets(
    client_probs: np.ndarray | Sequence[np.ndarray],
    *,
    space: str,
    num_examples: np.ndarray | Sequence[float] | None = None,
    temperature: float = 1.0,
    floor: float = FLOAT32_FLOOR,
) -> np.ndarray:
    """The weighted mean teacher of ``client_probs`` ``(K, N, C)`` in ``space``.

    ``num_examples`` (``(K,)``, non-negative, not all zero) weights the clients
    (``size_weighted``); ``None`` weights them equally. ``temperature`` is used by
    ``tempered_probs`` only; probabilities below ``floor`` read as ``floor`` before the
    log (the resolution of the rows: float32 by default). Returns ``(N, C)`` float32 rows
    summing to 1, computed in float64.

    Raises
    ------
    ValueError
        Malformed probabilities (:func:`~fedkd.distill.target_registry.check_probs`) or
        weights; an unknown space.
    """
    if space == "probs":  # the registry's own mean rules
        if num_examples is None:
            return teacher_targets(client_probs, rule="mean")
        return teacher_targets(client_probs, rule="size_weighted", num_examples=num_examples)
    probs = check_probs(client_probs).astype(np.float64)
    k = probs.shape[0]
    if num_examples is None:
        weights = np.full(k, 1.0 / k)
    else:
        weights = _num_examples(num_examples, k, "size_weighted")
        weights = weights / weights.sum()
    if space == "logits":
        log_probs = np.log(np.maximum(probs, floor))
        return _softmax(np.einsum("k,knc->nc", weights, log_probs))
    if space == "tempered_probs":
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_probs = np.log(np.maximum(probs, floor)) / temperature
        log_probs -= log_probs.max(axis=2, keepdims=True)
        tempered = np.exp(log_probs)
        tempered /= tempered.sum(axis=2, keepdims=True)
        mean = np.einsum("k,knc->nc", weights, tempered)
        return (mean / mean.sum(axis=1, keepdims=True)).astype(np.float32)
    raise ValueError(f"unknown teacher space {space!r}; expected one of {TEACHER_SPACES}")
