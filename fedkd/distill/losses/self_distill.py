"""Self-distillation through early-exit heads (BYOT, Zhang et al. 2019)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedkd.distill.losses.base import (
    DistillInputs,
    DistillLoss,
    check_nonnegative,
    check_temperature,
    check_unit,
)
from fedkd.distill.losses.hint import (
    check_layer_list,
    feature_shape,
    missing_module_error,
    new_module,
    pool_to_vector,
    shape_tag,
    vector_width,
)
from fedkd.distill.losses.kd import KDLoss
from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)


class SelfDistillLoss(DistillLoss):
    r"""Self-distillation of Zhang et al. (2019), "Be Your Own Teacher: Improve the
    Performance of Convolutional Neural Networks via Self Distillation" (BYOT),
    arXiv:1905.08094.

    Each exit layer ``i`` gets a learned head ``h_i`` (global average pooling of a map,
    then ``nn.Linear(dim, num_classes)``), giving exit logits ``e_i``. The final output
    ``s`` (the student's logits) teaches every exit, and the exits' features are pulled
    toward the final embedding ``z``:

    .. math::
        L = L_\mathrm{final}
          + w_e \frac{1}{N} \sum_{i=1}^{N} \Big[\alpha\, T^2\, \mathrm{KL}\big(
                \mathrm{softmax}(\bar s / T) \,\Vert\, \mathrm{softmax}(e_i / T)\big)
                + (1 - \alpha)\, \mathrm{CE}(e_i, y)\Big]
          + w_f \frac{1}{N} \sum_{i=1}^{N} \mathrm{mean}\big(a_i(f_i) - \bar z\big)^2

    where a bar marks a constant (``detach``): the exits learn from the final output, not
    the reverse. ``L_final`` is the :class:`~fedkd.distill.losses.kd.KDLoss` term toward
    ``teacher_probs`` (``main_alpha * T^2 KL + (1 - main_alpha) * CE`` at the same
    temperature) when the loop gives teacher probabilities, else ``CE(s, y)``. Without
    labels the exits' CE part is dropped (only the soft part remains). ``a_i`` is
    ``nn.Linear(dim_i, embedding_dim)`` (BYOT's bottleneck hint), created only when
    ``feature_weight > 0``.

    Heads and adapters are created by :meth:`bind` from a probe batch and kept in
    ``nn.ModuleDict`` s keyed by layer and shape (one loss object serves several student
    architectures); the optimizer must include ``loss.parameters()``. :meth:`exit_logits`
    evaluates the exits. Works without teacher models: on labels alone (a client's local
    training) or with teacher probabilities.

    YAML: ``distill: {name: self, temperature: 3.0, alpha: 0.5, exit_weight: 1.0,
    feature_weight: 0.0, layers: null, main_alpha: 1.0}``.

    Parameters
    ----------
    temperature : float
        Softening temperature ``T > 0`` of the exits' and the final KD terms (default 3.0).
    alpha : float
        Weight of the exits' soft term in ``[0, 1]`` (default 0.5; the rest is their CE).
    exit_weight : float
        ``w_e >= 0``, weight of the exits' term (default 1.0).
    feature_weight : float
        ``w_f >= 0``, weight of the feature hint (default 0.0, off).
    layers : list of str, optional
        Exit layers (default ``None``: every feature except ``"embedding"``).
    main_alpha : float
        ``alpha`` of the final output's KD term toward the teacher, in ``[0, 1]``
        (default 1.0, pure distillation; as ``kd``'s ``alpha``).

    Raises
    ------
    ConfigError
        ``temperature <= 0`` (``distill.temperature``), ``alpha`` / ``main_alpha`` outside
        ``[0, 1]``, negative weights, a malformed ``layers``; from :meth:`check_layers` or
        :meth:`bind`, an exit layer that does not exist or no exit layer at all
        (``distill.layers``).
    """

    name = "self"
    needs_student_features = True
    needs_teacher_features = False
    needs_teacher_probs = False

    def __init__(
        self,
        *,
        temperature: float = 3.0,
        alpha: float = 0.5,
        exit_weight: float = 1.0,
        feature_weight: float = 0.0,
        layers: list[str] | None = None,
        main_alpha: float = 1.0,
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.alpha = check_unit(alpha, "distill.alpha")
        self.exit_weight = check_nonnegative(exit_weight, "distill.exit_weight")
        self.feature_weight = check_nonnegative(feature_weight, "distill.feature_weight")
        self.layers = check_layer_list(layers, "distill.layers")
        self.main_alpha = check_unit(main_alpha, "distill.main_alpha")
        if self.exit_weight == 0.0 and self.feature_weight == 0.0:
            logger.warning(
                "distill.exit_weight and distill.feature_weight are both 0: the exits are "
                "never trained and self-distillation reduces to the final KD/CE term"
            )
        self.final = KDLoss(temperature=self.temperature, alpha=self.main_alpha)
        self.heads = nn.ModuleDict()
        self.adapters = nn.ModuleDict()

    def _exit_layers(self, names: Sequence[str]) -> list[str]:
        """The exit layers among ``names``; ConfigError naming ``distill.layers`` if none."""
        if self.layers is None:
            chosen = [name for name in names if name != "embedding"]
            if not chosen:
                raise ConfigError(
                    "distill.layers: self-distillation needs at least one exit layer besides "
                    f"'embedding', and this model's layers are {list(names)} (e.g. an mlp "
                    "with hidden=[]); give the model hidden layers / conv blocks"
                )
            return chosen
        for name in self.layers:
            if name not in names:
                raise ConfigError(
                    f"distill.layers: layer {name!r} does not exist; this model's layers are "
                    f"{list(names)}"
                )
        return list(self.layers)

    def check_layers(
        self, student_layers: Sequence[str], teacher_layers: Sequence[Sequence[str]] | None
    ) -> None:
        """Raise ConfigError naming ``distill.layers`` for missing or absent exit layers."""
        super().check_layers(student_layers, teacher_layers)
        self._exit_layers(student_layers)

    @staticmethod
    def _head_key(layer: str, feature: Tensor, num_classes: int) -> str:
        return f"{layer}:{shape_tag(feature_shape(feature))}->{num_classes}"

    @staticmethod
    def _adapter_key(layer: str, feature: Tensor, embedding: Tensor) -> str:
        return f"{layer}:{shape_tag(feature_shape(feature))}->embedding:{vector_width(embedding)}"

    def bind(self, inputs: DistillInputs) -> None:
        """Create the exit heads (and hint adapters) for this student's shapes if missing."""
        features = inputs.student_features
        num_classes = int(inputs.student_logits.shape[1])
        for layer in self._exit_layers(list(features)):
            feature = features[layer]
            key = self._head_key(layer, feature, num_classes)
            if key not in self.heads:
                head = partial(nn.Linear, vector_width(feature), num_classes)
                self.heads[key] = new_module(head, feature)
            if self.feature_weight > 0:
                embedding = features["embedding"]
                key = self._adapter_key(layer, feature, embedding)
                if key not in self.adapters:
                    linear = partial(nn.Linear, vector_width(feature), vector_width(embedding))
                    self.adapters[key] = new_module(linear, feature)

    def exit_logits(
        self, student_features: dict[str, Tensor], num_classes: int | None = None
    ) -> dict[str, Tensor]:
        """Logits ``(B, num_classes)`` of every exit head, keyed by layer.

        ``num_classes`` picks the heads when the loss was bound to students with different
        class counts (default: the only count bound for each layer).
        """
        exits: dict[str, Tensor] = {}
        for layer in self._exit_layers(list(student_features)):
            feature = student_features[layer]
            prefix = f"{layer}:{shape_tag(feature_shape(feature))}->"
            keys = [
                k
                for k in self.heads
                if k.startswith(prefix) and (num_classes is None or k == f"{prefix}{num_classes}")
            ]
            if len(keys) != 1:
                wanted = f"{prefix}{num_classes if num_classes is not None else '<classes>'}"
                raise missing_module_error(self.loss_name, wanted, list(self.heads))
            exits[layer] = self.heads[keys[0]](pool_to_vector(feature))
        return exits

    def forward(self, inputs: DistillInputs) -> Tensor:
        """Return the final term plus the weighted exit and feature terms."""
        logits, labels = inputs.student_logits, inputs.labels
        if inputs.teacher_probs is not None:
            total = self.final(inputs)
        elif labels is not None:
            total = F.cross_entropy(logits, labels)
        else:
            raise ValueError("distill.name='self' needs teacher_probs or labels")
        features = inputs.student_features
        exits = self.exit_logits(features, int(logits.shape[1]))
        t = self.temperature
        if self.exit_weight > 0:
            soft_target = F.log_softmax(logits.detach() / t, dim=1)
            exit_terms = []
            for exit_logits in exits.values():
                log_q = F.log_softmax(exit_logits / t, dim=1)
                soft = F.kl_div(log_q, soft_target, reduction="batchmean", log_target=True) * t * t
                if labels is None:
                    exit_terms.append(soft)
                else:
                    hard = F.cross_entropy(exit_logits, labels)
                    exit_terms.append(self.alpha * soft + (1.0 - self.alpha) * hard)
            total = total + self.exit_weight * torch.stack(exit_terms).mean()
        if self.feature_weight > 0:
            embedding = features["embedding"].detach()
            hints = []
            for layer in exits:
                feature = features[layer]
                key = self._adapter_key(layer, feature, embedding)
                if key not in self.adapters:
                    raise missing_module_error(self.loss_name, key, list(self.adapters))
                hints.append(F.mse_loss(self.adapters[key](pool_to_vector(feature)), embedding))
            total = total + self.feature_weight * torch.stack(hints).mean()
        return total

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``repr``."""
        return (
            f"temperature={self.temperature}, alpha={self.alpha}, "
            f"exit_weight={self.exit_weight}, feature_weight={self.feature_weight}, "
            f"layers={self.layers}, main_alpha={self.main_alpha}"
        )
