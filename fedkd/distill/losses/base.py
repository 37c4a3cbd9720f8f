"""What every distillation loss receives, the base class, and shared option checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from fedkd.errors import ConfigError


@dataclass
class DistillInputs:
    """One mini-batch as a distillation loss sees it.

    Attributes
    ----------
    student_logits : Tensor
        ``(B, C)`` raw student outputs.
    teacher_probs : Tensor or None
        ``(B, C)`` teacher probabilities (rows sum to 1), constants; ``None`` when the step
        has only labels (e.g. a client's local self-distillation).
    labels : Tensor or None
        ``(B,)`` integer labels; ``None`` for an unlabeled proxy.
    student_features : dict of str to Tensor
        The student's ``forward_features`` output (insertion-ordered, last entry
        ``"embedding"``); filled only when the loss sets ``needs_student_features``.
    teacher_features : list of dict of str to Tensor
        One feature dict per teacher model, computed without gradients on the same batch;
        filled only when the loss sets ``needs_teacher_features``.
    """

    student_logits: Tensor
    teacher_probs: Tensor | None = None
    labels: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: list[dict[str, Tensor]] = field(default_factory=list)


class DistillLoss(nn.Module):
    """Base class of fedkd's distillation losses.

    A loss is called as ``loss(DistillInputs(...))`` and returns a scalar. Losses that
    learn something alongside the student (FitNets adapters, early-exit heads) create those
    modules in :meth:`bind`, which the distillation loop calls with one probe batch before
    it builds the optimizer over ``student.parameters()`` and ``loss.parameters()``.

    Attributes
    ----------
    needs_student_features : bool
        The loop must call ``student.forward_features`` (not just ``forward``).
    needs_teacher_features : bool
        The loss needs teacher *models* (their intermediate features), so it works only
        where the server holds client models (FedDF with ``teacher_from=weights``).
    needs_teacher_probs : bool
        The loss reads ``teacher_probs`` (False for pure feature losses and for
        self-distillation, which can run on labels alone).
    """

    needs_student_features: bool = False
    needs_teacher_features: bool = False
    needs_teacher_probs: bool = True

    def check_layers(
        self, student_layers: Sequence[str], teacher_layers: Sequence[Sequence[str]] | None
    ) -> None:
        """Raise ConfigError naming the key when a layer this loss reads does not exist.

        ``student_layers`` is the student's ``feature_names``; ``teacher_layers`` has one
        entry per teacher architecture, or is ``None`` where no teacher models exist.
        Called before any training (and before Ray starts).
        """
        if self.needs_teacher_features and teacher_layers is None:
            raise ConfigError(
                f"distill.name={self.loss_name!r} matches the teacher's intermediate features, "
                "which exist only where the server holds the client models: use "
                "strategy=feddf with strategy.teacher_from=weights"
            )

    def bind(self, inputs: DistillInputs) -> None:
        """Create learned modules sized from one probe batch (default: nothing to create)."""

    def set_progress(self, fraction: float) -> None:
        """Tell scheduled hyper-parameters how far training is, ``fraction`` in ``[0, 1]``."""

    @property
    def loss_name(self) -> str:
        """The registry name of this loss (``distill.name``)."""
        return str(getattr(type(self), "name", type(self).__name__))

    def forward(self, inputs: DistillInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def is_real(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_temperature(value: Any, key: str = "distill.temperature") -> float:
    """A finite temperature > 0, else ConfigError naming ``key``."""
    if not is_real(value) or not value > 0:
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
    return float(value)


def check_unit(value: Any, key: str) -> float:
    """A number in ``[0, 1]``, else ConfigError naming ``key``."""
    if not is_real(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_nonnegative(value: Any, key: str) -> float:
    """A finite number >= 0, else ConfigError naming ``key``."""
    if not is_real(value) or value < 0:
        raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")
    return float(value)


SCHEDULES = ("linear", "cosine")


def scheduled(start: float, end: float | None, fraction: float, schedule: str) -> float:
    """Value of a hyper-parameter annealed from ``start`` to ``end`` at ``fraction`` of training.

    ``end=None`` keeps ``start``. ``linear`` interpolates; ``cosine`` follows half a cosine
    (slow at both ends).
    """
    if end is None:
        return start
    f = min(max(fraction, 0.0), 1.0)
    if schedule == "cosine":
        f = 0.5 * (1.0 - math.cos(math.pi * f))
    return start + (end - start) * f


def resolve_layer(name: str, available: Sequence[str], key: str) -> str:
    """Resolve a layer option: a feature name, ``"middle"`` or ``"embedding"``.

    ``"middle"`` is ``available[len(available) // 2]`` (FitNets guides a middle layer).

    Raises
    ------
    ConfigError
        Naming ``key``, the layer and the layers that exist.
    """
    if name == "middle":
        return available[len(available) // 2]
    if name not in available:
        raise ConfigError(
            f"{key}: layer {name!r} does not exist; this model's layers are {list(available)} "
            "(or 'middle')"
        )
    return name
