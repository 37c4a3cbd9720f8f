"""Distillation losses, target aggregation and the distillation loop."""

from fedkd.distill.loop import DistillReport, agreement, distill
from fedkd.distill.losses import LOSS_NAMES, LOSSES, KDLoss, build_loss, loss_options
from fedkd.distill.targets import ensemble_accuracy, mean_targets

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "DistillReport",
    "KDLoss",
    "agreement",
    "build_loss",
    "distill",
    "ensemble_accuracy",
    "loss_options",
    "mean_targets",
]
