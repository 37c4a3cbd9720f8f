"""Distillation losses, target aggregation and the distillation loop.

Re-exports the teacher-target rules (:mod:`fedkd.distill.targets`) and their registry
(:mod:`fedkd.distill.target_registry`): the names in each module's ``__all__``.
"""

from fedkd.distill import target_registry, targets
from fedkd.distill.loop import DistillReport, agreement, distill
from fedkd.distill.losses import LOSS_NAMES, LOSSES, KDLoss, build_loss, loss_options
from fedkd.distill.target_registry import *  # noqa: F403
from fedkd.distill.targets import *  # noqa: F403

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "DistillReport",
    "KDLoss",
    "agreement",
    "build_loss",
    "distill",
    "loss_options",
    *target_registry.__all__,
    *targets.__all__,
]
