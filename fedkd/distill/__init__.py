"""Distillation losses, target aggregation and the distillation loop."""

from fedkd.distill.loop import DistillReport, agreement, distill
from fedkd.distill.losses import LOSS_NAMES, LOSSES, KDLoss, build_loss, loss_options
from fedkd.distill.targets import (
    TARGET_RULES,
    confidence_targets,
    ensemble_accuracy,
    entropy_targets,
    era_targets,
    label_aware_targets,
    mean_targets,
    median_targets,
    robust_mean_targets,
    size_weighted_targets,
    target_rule_options,
    teacher_targets,
    trimmed_mean_targets,
    validate_target_rule,
)

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "TARGET_RULES",
    "DistillReport",
    "KDLoss",
    "agreement",
    "build_loss",
    "confidence_targets",
    "distill",
    "ensemble_accuracy",
    "entropy_targets",
    "era_targets",
    "label_aware_targets",
    "loss_options",
    "mean_targets",
    "median_targets",
    "robust_mean_targets",
    "size_weighted_targets",
    "target_rule_options",
    "teacher_targets",
    "trimmed_mean_targets",
    "validate_target_rule",
]
