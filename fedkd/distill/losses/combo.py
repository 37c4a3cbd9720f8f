"""A weighted sum of registered distillation losses (``distill: {name: combo, terms: [...]}``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from fedkd.distill.losses.base import DistillInputs, DistillLoss, check_nonnegative
from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)


@contextmanager
def _term_keys(index: int) -> Iterator[None]:
    """Re-raise a term's ConfigError with ``distill.<key>`` renamed ``distill.terms[i].<key>``."""
    try:
        yield
    except ConfigError as err:
        message = re.sub(r"\bdistill\.", f"distill.terms[{index}].", str(err))
        raise ConfigError(message) from err


class WeightedSumLoss(DistillLoss):
    r"""A weighted sum of distillation losses, each built through the registry.

    .. math::
        L = \sum_{j} w_j \, L_j(\text{inputs})

    as torchdistill composes its losses, e.g. Hinton KD plus a FitNets hint or the RKD
    terms of Park et al. (2019) with the paper's weights. The flags ``needs_*`` are the OR
    of the terms' (the loop computes features when any term needs them); ``check_layers``,
    ``bind`` and ``set_progress`` are passed to every term, and the terms' learned modules
    are this module's parameters. Terms of weight 0 are built and checked but not computed.

    YAML::

        distill:
          name: combo
          terms:
            - {name: kd, weight: 1.0, temperature: 4.0}
            - {name: hint, weight: 0.5}

    Parameters
    ----------
    terms : list of dict
        Each ``{name: <registered loss>, weight: <float >= 0, default 1.0>, **options}``,
        the options being that loss's (``distill.terms[i].<option>``). A combo cannot
        contain another combo. Required.

    Raises
    ------
    ConfigError
        Missing or empty ``terms``, a term that is not a mapping, an unknown or nested
        ``name``, a negative ``weight``, or any error of a term's options, named as
        ``distill.terms[i].<key>``.
    """

    name = "combo"

    def __init__(self, *, terms: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        # The registry imports this module, so it is looked up when a combo is built.
        from fedkd.distill.losses import LOSS_NAMES, build_loss

        if isinstance(terms, (str, bytes, Mapping)) or not isinstance(terms, Sequence) or not terms:
            raise ConfigError(
                "distill.terms must be a non-empty list of {name: <loss>, weight: <float>, "
                f"...options}} (e.g. [{{name: kd, weight: 1.0}}]), got {terms!r}"
            )
        self.terms = nn.ModuleList()
        self.weights: list[float] = []
        for index, spec in enumerate(terms):
            key = f"distill.terms[{index}]"
            if not isinstance(spec, Mapping):
                raise ConfigError(
                    f"{key} must be a mapping {{name: <loss>, weight: ...}}, got {spec!r}"
                )
            options = dict(spec)
            name = options.pop("name", None)
            if name == self.name:
                raise ConfigError(f"{key}.name: a combo cannot contain another combo")
            if name is None:
                raise ConfigError(f"{key}.name is missing; one of {list(LOSS_NAMES)}")
            weight = check_nonnegative(options.pop("weight", 1.0), f"{key}.weight")
            if weight == 0.0:
                logger.warning("%s.weight is 0: the %r term does not contribute", key, name)
            with _term_keys(index):
                self.terms.append(build_loss(name, **options))
            self.weights.append(weight)
        self.needs_student_features = any(t.needs_student_features for t in self._losses())
        self.needs_teacher_features = any(t.needs_teacher_features for t in self._losses())
        self.needs_teacher_probs = any(t.needs_teacher_probs for t in self._losses())

    def _losses(self) -> list[DistillLoss]:
        return [term for term in self.terms if isinstance(term, DistillLoss)]

    def check_layers(
        self, student_layers: Sequence[str], teacher_layers: Sequence[Sequence[str]] | None
    ) -> None:
        """Check every term's layers; errors name ``distill.terms[i].<key>``."""
        for index, term in enumerate(self._losses()):
            with _term_keys(index):
                term.check_layers(student_layers, teacher_layers)

    def bind(self, inputs: DistillInputs) -> None:
        """Bind every term (creating their learned modules) on the probe batch."""
        for index, term in enumerate(self._losses()):
            with _term_keys(index):
                term.bind(inputs)

    def set_progress(self, fraction: float) -> None:
        """Pass training progress to every term's schedules."""
        for term in self._losses():
            term.set_progress(fraction)

    def forward(self, inputs: DistillInputs) -> Tensor:
        """Return ``sum_j w_j * term_j(inputs)`` over the terms of nonzero weight."""
        total: Tensor | None = None
        for weight, term in zip(self.weights, self._losses(), strict=True):
            if weight == 0.0:
                continue
            value = weight * term(inputs)
            total = value if total is None else total + value
        if total is None:  # every weight is 0
            return inputs.student_logits.sum() * 0.0
        return total

    def extra_repr(self) -> str:
        """Show the weights in ``repr`` (the terms print as children)."""
        return f"weights={self.weights}"
