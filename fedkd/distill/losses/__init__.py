"""Distillation losses (one class per module) and their name registry.

Adding a loss = a :class:`DistillLoss` subclass with keyword-only options and a ``name``
class attribute, plus one entry in :data:`LOSSES`.
"""

from __future__ import annotations

import inspect
from typing import Any

from fedkd.distill.losses.attention import AttentionLoss
from fedkd.distill.losses.base import DistillInputs, DistillLoss
from fedkd.distill.losses.combo import WeightedSumLoss
from fedkd.distill.losses.feature import FEATURE_MODES, FeatureLoss
from fedkd.distill.losses.hint import HintLoss
from fedkd.distill.losses.kd import SOFT_LOSSES, KDLoss
from fedkd.distill.losses.paired import PAIRING_OPTIONS, SoftTargetPaired
from fedkd.distill.losses.self_distill import SelfDistillLoss
from fedkd.registry import check_name, check_option_names

LOSSES: dict[str, type[DistillLoss]] = {
    "kd": KDLoss,
    "hint": HintLoss,
    "feature": FeatureLoss,
    "attention": AttentionLoss,
    "self": SelfDistillLoss,
    "combo": WeightedSumLoss,
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)
#: Feature losses that also take the soft-target pairing options (see SoftTargetPaired).
FEATURE_LOSSES: tuple[str, ...] = ("hint", "feature", "attention")


def loss_options(name: str) -> tuple[str, ...]:
    """Return the option names accepted by loss ``name``.

    Raises
    ------
    ConfigError
        If ``name`` is not in :data:`LOSS_NAMES` (key ``distill.name``).
    """
    check_name("distill.name", name, LOSS_NAMES)
    params = inspect.signature(LOSSES[name].__init__).parameters
    own = tuple(p for p in params if p != "self")
    return own + PAIRING_OPTIONS if name in FEATURE_LOSSES else own


def build_loss(name: str, **options: Any) -> DistillLoss:
    """Build a distillation loss from the registry.

    YAML: ``distill: {name: kd, temperature: 3.0, alpha: 1.0}`` ->
    ``build_loss("kd", temperature=3.0, alpha=1.0)``.

    Raises
    ------
    ConfigError
        Unknown ``distill.name``, unknown option ``distill.<option>`` (message lists the
        allowed ones) or invalid option values.
    """
    allowed = loss_options(name)
    check_option_names(options, allowed, key="distill", owner=f"distill.name={name!r}")
    if name in FEATURE_LOSSES:
        pairing = {k: options.pop(k) for k in PAIRING_OPTIONS if k in options}
        feature_loss = LOSSES[name](**options)
        if pairing.get("kd_weight", 0.0) == 0.0 and pairing.get("weight", 1.0) == 1.0:
            return feature_loss
        return SoftTargetPaired(feature_loss, **{"kd_weight": 0.0, **pairing})
    return LOSSES[name](**options)


__all__ = [
    "FEATURE_LOSSES",
    "FEATURE_MODES",
    "LOSSES",
    "LOSS_NAMES",
    "SOFT_LOSSES",
    "AttentionLoss",
    "DistillInputs",
    "DistillLoss",
    "FeatureLoss",
    "HintLoss",
    "KDLoss",
    "SelfDistillLoss",
    "SoftTargetPaired",
    "WeightedSumLoss",
    "build_loss",
    "loss_options",
]
