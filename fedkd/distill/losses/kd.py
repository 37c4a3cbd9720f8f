"""Soft-target knowledge distillation (Hinton et al. 2015) with KL, MSE or MAE soft terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedkd.distill.losses.base import (
    SCHEDULES,
    DistillInputs,
    DistillLoss,
    check_nonnegative,
    check_temperature,
    check_unit,
    scheduled,
)
from fedkd.errors import ConfigError

SOFT_LOSSES = ("kl", "mse", "mae")


class KDLoss(DistillLoss):
    r"""Knowledge-distillation loss of Hinton, Vinyals & Dean (2015), "Distilling the
    Knowledge in a Neural Network", arXiv:1503.02531, on teacher *probabilities*.

    Clients share softmax outputs, so the teacher arrives as probabilities ``p``. Its
    logits are recovered up to a per-row constant as ``z = log(p + eps)``, softened at
    temperature ``T`` as ``p_T = softmax(z / T)``. With student logits ``s`` and
    ``q_T = softmax(s / T)``:

    .. math::
        L = \alpha \, S(s, z) + (1 - \alpha) \, \mathrm{CE}(s, y)

    where the soft term ``S`` is, by ``soft_loss``:

    - ``kl`` (default): ``T^2 KL(p_T || q_T)``, summed over classes, averaged over the
      batch. The ``T^2`` factor keeps gradient magnitudes comparable across temperatures.
    - ``mse``: mean squared error between centred logits, ``mean((s - mean(s)) / T -
      (z - mean(z)) / T)^2 * T^2`` (logit matching, Ba & Caruana 2014; centring removes the
      constant that ``log p`` leaves undetermined).
    - ``mae``: the same with absolute error (FedMD's digest loss, Li & Wang 2019, is an L1
      on class scores).

    CE is the mean cross-entropy of the unsoftened student logits against hard labels
    ``y``. Without labels (an unlabeled proxy) the CE term is skipped and the soft term gets
    full weight; ``alpha`` is then ignored.

    Targets already softened: a method whose teacher is averaged at the temperature
    (FedDF's ``teacher_space=tempered_probs``) sets :attr:`teacher_temperature` to ``T``;
    the teacher's logits are then ``T log(p + eps)``, so ``p_T = p`` and the targets are
    not softened twice. The default 1.0 reads targets as ``T = 1`` probabilities.

    Schedules: ``temperature_end`` / ``alpha_end`` anneal ``temperature`` / ``alpha`` over
    one distillation call (the loop reports progress per epoch), ``schedule`` ``linear`` or
    ``cosine``.

    YAML: ``distill: {name: kd, temperature: 3.0, alpha: 1.0, soft_loss: kl}``.

    Parameters
    ----------
    temperature : float
        Softening temperature ``T > 0`` (default 1.0). ``distill.temperature``.
    alpha : float
        Weight of the soft term in ``[0, 1]`` (default 1.0, pure distillation).
    soft_loss : {"kl", "mse", "mae"}
        The soft term (default ``kl``).
    eps : float
        Added to teacher probabilities before the log (default 1e-8).
    temperature_end, alpha_end : float, optional
        Final values of annealed hyper-parameters (default: constant).
    schedule : {"linear", "cosine"}
        Annealing shape (default ``linear``).

    Raises
    ------
    ConfigError
        ``temperature <= 0``, ``alpha`` outside ``[0, 1]``, ``eps < 0``, an unknown
        ``soft_loss`` or ``schedule``.
    """

    name = "kd"

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        alpha: float = 1.0,
        soft_loss: str = "kl",
        eps: float = 1e-8,
        temperature_end: float | None = None,
        alpha_end: float | None = None,
        schedule: str = "linear",
    ) -> None:
        super().__init__()
        self.temperature_start = check_temperature(temperature)
        self.alpha_start = check_unit(alpha, "distill.alpha")
        self.eps = check_nonnegative(eps, "distill.eps")
        if soft_loss not in SOFT_LOSSES:
            raise ConfigError(f"distill.soft_loss must be one of {SOFT_LOSSES}, got {soft_loss!r}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"distill.schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.temperature_end = (
            None
            if temperature_end is None
            else check_temperature(temperature_end, "distill.temperature_end")
        )
        self.alpha_end = None if alpha_end is None else check_unit(alpha_end, "distill.alpha_end")
        self.soft_loss = soft_loss
        self.schedule = schedule
        self.temperature = self.temperature_start
        self.alpha = self.alpha_start
        #: The temperature the teacher targets are given at (set by the method, not YAML).
        self.teacher_temperature = 1.0

    def set_progress(self, fraction: float) -> None:
        """Move scheduled temperature and alpha to ``fraction`` of the way."""
        self.temperature = scheduled(
            self.temperature_start, self.temperature_end, fraction, self.schedule
        )
        self.alpha = scheduled(self.alpha_start, self.alpha_end, fraction, self.schedule)

    def soft_term(self, student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
        """The soft term ``S(s, z)`` alone (no label mixing)."""
        if student_logits.ndim != 2 or student_logits.shape != teacher_probs.shape:
            raise ValueError(
                "student_logits and teacher_probs must both be (B, C) with equal shapes, got "
                f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
            )
        t = self.temperature
        teacher_logits = torch.log(teacher_probs.detach().to(student_logits.dtype) + self.eps)
        if self.teacher_temperature != 1.0:
            teacher_logits = teacher_logits * self.teacher_temperature
        if self.soft_loss == "kl":
            log_p_t = F.log_softmax(teacher_logits / t, dim=1)
            log_q_t = F.log_softmax(student_logits / t, dim=1)
            return F.kl_div(log_q_t, log_p_t, reduction="batchmean", log_target=True) * (t * t)
        diff = (student_logits - student_logits.mean(dim=1, keepdim=True)) - (
            teacher_logits - teacher_logits.mean(dim=1, keepdim=True)
        )
        # (d / T)^2 * T^2 = d^2 and |d / T| * T^2 = |d| * T: the T^2 convention of the KL term.
        if self.soft_loss == "mse":
            return diff.pow(2).mean()
        return diff.abs().mean() * t

    def forward(self, inputs: DistillInputs) -> Tensor:
        """Return the scalar loss (see the class notes)."""
        logits, labels = inputs.student_logits, inputs.labels
        if inputs.teacher_probs is None:
            if labels is None:
                raise ValueError("kd needs teacher_probs or labels")
            return F.cross_entropy(logits, labels)
        soft = self.soft_term(logits, inputs.teacher_probs)
        if labels is None:
            return soft
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}"
            )
        if self.alpha == 1.0:
            return soft
        hard = F.cross_entropy(logits, labels)
        return self.alpha * soft + (1.0 - self.alpha) * hard

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``repr``."""
        return (
            f"temperature={self.temperature}, alpha={self.alpha}, soft_loss={self.soft_loss}, "
            f"eps={self.eps}"
        )
