"""Feature losses paired with soft targets, so the student's classifier learns too."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fedkd.distill.losses.base import DistillInputs, DistillLoss, check_nonnegative
from fedkd.distill.losses.kd import KDLoss

#: Options every feature loss (``hint``, ``feature``, ``attention``) accepts on top of its own.
PAIRING_OPTIONS = ("weight", "kd_weight", "temperature", "alpha")


class SoftTargetPaired(DistillLoss):
    r"""``weight * L_feature + kd_weight * L_kd``: a feature loss with the soft-target term.

    Matching intermediate features alone never trains the student's classification head,
    so FitNets (stage 2), attention transfer and RKD are all used together with Hinton's
    soft-target loss. ``distill=hint|feature|attention`` build this pairing; with
    ``kd_weight: 0`` the feature loss stands alone (e.g. as a term of ``combo``).

    YAML: ``distill: {name: hint, weight: 1.0, kd_weight: 1.0, temperature: 1.0, alpha:
    1.0, ...hint options}``.

    Parameters
    ----------
    feature_loss : DistillLoss
        The feature-matching term.
    weight : float
        Its weight (default 1.0), ``distill.weight``.
    kd_weight : float
        Weight of :class:`~fedkd.distill.losses.KDLoss` (``distill.kd_weight``).
    temperature, alpha : float
        Options of the soft-target term (``distill.temperature``, ``distill.alpha``).
    """

    def __init__(
        self,
        feature_loss: DistillLoss,
        *,
        weight: float = 1.0,
        kd_weight: float = 1.0,
        temperature: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__()
        self.feature_loss = feature_loss
        self.weight = check_nonnegative(weight, "distill.weight")
        self.kd_weight = check_nonnegative(kd_weight, "distill.kd_weight")
        self.kd = KDLoss(temperature=temperature, alpha=alpha)
        self.needs_student_features = feature_loss.needs_student_features
        self.needs_teacher_features = feature_loss.needs_teacher_features
        self.needs_teacher_probs = True

    @property
    def loss_name(self) -> str:
        """The feature loss's registry name."""
        return self.feature_loss.loss_name

    def check_layers(
        self, student_layers: Sequence[str], teacher_layers: Sequence[Sequence[str]] | None
    ) -> None:
        """The feature loss's layer checks."""
        self.feature_loss.check_layers(student_layers, teacher_layers)

    def bind(self, inputs: DistillInputs) -> None:
        """Create the feature loss's learned modules."""
        self.feature_loss.bind(inputs)

    def set_progress(self, fraction: float) -> None:
        """Schedules of both terms."""
        self.feature_loss.set_progress(fraction)
        self.kd.set_progress(fraction)

    def forward(self, inputs: DistillInputs) -> Tensor:
        """Return ``weight * feature + kd_weight * kd``."""
        total = self.weight * self.feature_loss(inputs)
        if self.kd_weight > 0:
            total = total + self.kd_weight * self.kd(inputs)
        return total

    def extra_repr(self) -> str:
        """Show the weights in ``repr``."""
        return f"weight={self.weight}, kd_weight={self.kd_weight}"
