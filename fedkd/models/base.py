"""Base class and option validators shared by all fedkd models."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)


class FedKDModel(nn.Module):
    """Base class of every model built by :func:`fedkd.models.build_model`.

    Subclasses implement :meth:`forward_features`; :meth:`forward` returns its logits.

    Attributes
    ----------
    feature_names : tuple of str
        Names of the intermediate features returned by :meth:`forward_features`, in order.
        The last one is always ``"embedding"``, the penultimate vector fed to the
        classification head.
    spec : dict
        ``{"name", "options", "input_shape", "num_classes"}``; enough to rebuild the
        architecture with :func:`fedkd.models.model_from_spec`.
    """

    feature_names: tuple[str, ...]
    spec: dict[str, Any]

    def __init__(
        self,
        name: str,
        *,
        options: dict[str, Any],
        input_shape: tuple[int, ...],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.spec = {
            "name": name,
            "options": dict(options),
            "input_shape": tuple(input_shape),
            "num_classes": num_classes,
        }
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits, shape ``(B, num_classes)``."""
        logits, _ = self.forward_features(x)
        return logits

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(logits, features)`` where ``features`` maps :attr:`feature_names` to tensors.

        Parameters
        ----------
        x : Tensor
            Batch of inputs, shape ``(B, *input_shape)``.

        Returns
        -------
        tuple of (Tensor, dict of str to Tensor)
            Logits ``(B, num_classes)`` and an insertion-ordered dict of intermediate
            features whose last entry is ``"embedding"``.
        """
        raise NotImplementedError


def positive_int(value: Any, key: str) -> int:
    """Return ``value`` as an int, raising ConfigError naming ``key`` unless it is >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return int(value)


def positive_int_list(value: Any, key: str, *, allow_empty: bool = False) -> list[int]:
    """Return ``value`` as a list of positive ints, raising ConfigError naming ``key``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{key} must be a list of positive integers, got {value!r}")
    if not value and not allow_empty:
        raise ConfigError(f"{key} must be a non-empty list of positive integers, got {value!r}")
    return [positive_int(v, key) for v in value]


def unit_interval(value: Any, key: str, *, include_one: bool = False) -> float:
    """Return ``value`` as a float in ``[0, 1)`` (``[0, 1]``); else ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    v = float(value)
    upper_ok = v <= 1.0 if include_one else v < 1.0
    if not (math.isfinite(v) and v >= 0.0 and upper_ok):
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ConfigError(f"{key} must be in {interval}, got {value!r}")
    return v


def flat_size(shape: Sequence[int]) -> int:
    """Product of ``shape`` (1 for an empty shape)."""
    return int(math.prod(shape))
