"""Distillation losses on probability targets, and their name registry."""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)


class KDLoss(nn.Module):
    r"""Knowledge-distillation loss of Hinton, Vinyals & Dean (2015), "Distilling the
    Knowledge in a Neural Network", arXiv:1503.02531, on teacher *probabilities*.

    Clients share softmax outputs, so the teacher arrives as probabilities ``p`` and is
    softened at temperature ``T`` as

    .. math:: p_T = \mathrm{softmax}(\log(p + \epsilon) / T),

    which equals ``softmax(z / T)`` for teacher logits ``z`` (up to ``eps``). With the
    student's ``q_T = softmax(s / T)``:

    .. math::
        L = \alpha \, T^2 \, \mathrm{KL}(p_T \,\|\, q_T)
            + (1 - \alpha) \, \mathrm{CE}(s, y)

    where KL is summed over classes and averaged over the batch (``batchmean``) and CE
    is the mean cross-entropy of the *unsoftened* student logits against hard labels
    ``y``. The ``T^2`` factor keeps soft-target gradient magnitudes comparable across
    temperatures.

    When ``labels`` is ``None`` (e.g. an unlabeled proxy set) the CE term is skipped and
    the soft term gets full weight, ``L = T^2 KL(p_T || q_T)``; ``alpha`` is then
    ignored (so ``alpha < 1`` without labels is allowed and simply has no effect).

    YAML: ``distill: {name: kd, temperature: 3.0, alpha: 1.0}``.

    Parameters
    ----------
    temperature : float, optional
        Softening temperature ``T > 0`` (default 1.0). Config key ``distill.temperature``.
    alpha : float, optional
        Weight of the soft term in ``[0, 1]`` (default 1.0, pure distillation). Config key
        ``distill.alpha``.
    eps : float, optional
        Added to teacher probabilities before the log (default 1e-8). Config key
        ``distill.eps``.

    Raises
    ------
    ConfigError
        If ``temperature <= 0``, ``alpha`` is outside ``[0, 1]`` or ``eps < 0``.
    """

    def __init__(self, *, temperature: float = 1.0, alpha: float = 1.0, eps: float = 1e-8) -> None:
        super().__init__()
        if not _is_real(temperature) or not temperature > 0:
            raise ConfigError(
                f"distill.temperature must be a finite number > 0, got {temperature!r}"
            )
        if not _is_real(alpha) or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be a number in [0, 1], got {alpha!r}")
        if not _is_real(eps) or eps < 0:
            raise ConfigError(f"distill.eps must be a finite number >= 0, got {eps!r}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.eps = float(eps)

    def forward(
        self, student_logits: Tensor, teacher_probs: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """Return the scalar loss.

        Parameters
        ----------
        student_logits : Tensor
            ``(B, C)`` raw student outputs.
        teacher_probs : Tensor
            ``(B, C)`` teacher probabilities (rows sum to 1); treated as constants.
        labels : Tensor, optional
            ``(B,)`` integer labels for the CE term; ``None`` skips it (see class notes).
        """
        if student_logits.ndim != 2 or student_logits.shape != teacher_probs.shape:
            raise ValueError(
                "student_logits and teacher_probs must both be (B, C) with equal shapes, got "
                f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
            )
        t = self.temperature
        teacher = teacher_probs.detach().to(student_logits.dtype)
        log_p_t = F.log_softmax(torch.log(teacher + self.eps) / t, dim=1)
        log_q_t = F.log_softmax(student_logits / t, dim=1)
        soft = F.kl_div(log_q_t, log_p_t, reduction="batchmean", log_target=True) * (t * t)
        if labels is None:
            return soft
        if labels.shape != student_logits.shape[:1]:
            raise ValueError(
                f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}"
            )
        if self.alpha == 1.0:
            return soft
        hard = F.cross_entropy(student_logits, labels)
        return self.alpha * soft + (1.0 - self.alpha) * hard

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``repr``."""
        return f"temperature={self.temperature}, alpha={self.alpha}, eps={self.eps}"


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Adding a loss = writing an nn.Module whose forward is (student_logits, teacher_probs,
# labels=None) and whose __init__ takes keyword-only options, plus one entry here.
LOSSES: dict[str, type[nn.Module]] = {"kd": KDLoss}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


def loss_options(name: str) -> tuple[str, ...]:
    """Return the option names accepted by loss ``name``.

    Raises
    ------
    ConfigError
        If ``name`` is not in :data:`LOSS_NAMES` (key ``distill.name``).
    """
    if not isinstance(name, str) or name not in LOSSES:
        raise ConfigError(f"distill.name must be one of {list(LOSS_NAMES)}, got {name!r}")
    params = inspect.signature(LOSSES[name].__init__).parameters
    return tuple(p for p in params if p != "self")


def build_loss(name: str, **options: Any) -> nn.Module:
    """Build a distillation loss from the registry.

    YAML: ``distill: {name: kd, temperature: 3.0, alpha: 1.0}`` ->
    ``build_loss("kd", temperature=3.0, alpha=1.0)``.

    Parameters
    ----------
    name : str
        One of :data:`LOSS_NAMES`.
    **options
        Keyword options of the loss class.

    Raises
    ------
    ConfigError
        Unknown ``distill.name``, unknown option ``distill.<option>`` (message lists the
        allowed ones) or invalid option values.
    """
    allowed = loss_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"distill.{unknown[0]}: unknown option(s) {unknown} for distill.name={name!r}; "
            f"allowed options: {list(allowed)}"
        )
    return LOSSES[name](**options)
