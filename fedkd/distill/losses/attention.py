"""Attention transfer (Zagoruyko & Komodakis 2017) between convolutional feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedkd.distill.losses.base import DistillInputs, DistillLoss, check_temperature
from fedkd.distill.losses.hint import (
    check_layer_list,
    feature_shape,
    is_map,
    teacher_feature_list,
)
from fedkd.errors import ConfigError


def attention_map(feature: Tensor, p: float) -> Tensor:
    """``mean_c |F_c|^p`` of a ``(B, C, *S)`` map, shape ``(B, *S)`` (not normalised)."""
    return feature.abs().pow(p).mean(dim=1)


def _pool_to(attention: Tensor, size: tuple[int, ...]) -> Tensor:
    """Adaptive average pooling of a ``(B, *S)`` attention map to spatial ``size``."""
    if tuple(attention.shape[1:]) == size:
        return attention
    if len(size) == 2:
        pooled = F.adaptive_avg_pool2d(attention.unsqueeze(1), (size[0], size[1]))
    else:
        pooled = F.adaptive_avg_pool1d(attention.unsqueeze(1), size[0])
    return pooled.squeeze(1)


def attention_distance(student: Tensor, teacher: Tensor, p: float) -> Tensor:
    """Mean over the batch of ``||Q_s - Q_t||_2`` for one pair of maps (teacher constant).

    Each attention map is pooled to the element-wise smaller spatial size of the two, then
    flattened and L2-normalised per example.
    """
    q_s, q_t = attention_map(student, p), attention_map(teacher.detach(), p).to(student.dtype)
    size = tuple(min(a, b) for a, b in zip(q_s.shape[1:], q_t.shape[1:], strict=True))
    q_s = F.normalize(_pool_to(q_s, size).flatten(1), dim=1)
    q_t = F.normalize(_pool_to(q_t, size).flatten(1), dim=1)
    return (q_s - q_t).norm(p=2, dim=1).mean()


def _describe(features: dict[str, Tensor]) -> str:
    return ", ".join(f"{name} {tuple(f.shape)}" for name, f in features.items())


class AttentionLoss(DistillLoss):
    r"""Activation-based attention transfer of Zagoruyko & Komodakis (2017), "Paying More
    Attention to Attention", arXiv:1612.03928.

    The attention map of a feature map ``F`` of shape ``(B, C, *S)`` is the channel mean of
    ``|F_c|^p``, flattened and L2-normalised per example:

    .. math::
        Q(F) = \frac{\mathrm{vec}(\mathrm{mean}_c |F_c|^p)}
                    {\lVert \mathrm{vec}(\mathrm{mean}_c |F_c|^p) \rVert_2}, \qquad
        L = \frac{1}{K\,|P|} \sum_{k=1}^{K} \sum_{(i, j) \in P}
            \mathrm{mean}_b \lVert Q(S_i)_b - Q(T_{k,j})_b \rVert_2

    over the layer pairs ``P`` and the ``K`` teacher models (teacher maps are constants).
    When the two maps of a pair differ in spatial size, the larger attention map is
    adaptively average-pooled to the smaller size before normalising. The paper's
    ``beta / 2`` weighting and squared norm are left to the ``combo`` weight; the norm is
    taken as written in its Eq. 2.

    By default (``None``) the layers are all the feature *maps* (every feature but
    ``"embedding"``), paired from the end: the student's last map with each teacher's last,
    and so on, ``min`` of the two counts pairs. Explicit lists are paired in order. Maps of
    a pair must have the same rank (both ``(B, C, L)`` or both ``(B, C, H, W)``).

    Needs teacher models with convolutional feature maps on both sides (``model=cnn`` /
    ``cnn1d``, ``student=cnn`` / ``cnn1d``) and ``strategy=feddf`` with
    ``strategy.teacher_from=weights``. No learned parameters.

    YAML: ``distill: {name: attention, student_layers: null, teacher_layers: null, p: 2.0}``.

    Parameters
    ----------
    student_layers, teacher_layers : list of str, optional
        Feature maps to pair (default ``None``: all maps, paired from the end). With both
        given, they must have the same length.
    p : float
        Exponent of the activations, ``> 0`` (default 2.0, the paper's choice).

    Raises
    ------
    ConfigError
        ``p <= 0``, malformed layer lists, lists of different lengths; from
        :meth:`check_layers`, a layer that does not exist or no teacher models; from
        :meth:`bind` (and ``forward``), a chosen feature that is not a spatial map, or a
        model without feature maps (e.g. an MLP).
    """

    name = "attention"
    needs_student_features = True
    needs_teacher_features = True
    needs_teacher_probs = False

    def __init__(
        self,
        *,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
        p: float = 2.0,
    ) -> None:
        super().__init__()
        self.student_layers = check_layer_list(student_layers, "distill.student_layers")
        self.teacher_layers = check_layer_list(teacher_layers, "distill.teacher_layers")
        if (
            self.student_layers is not None
            and self.teacher_layers is not None
            and len(self.student_layers) != len(self.teacher_layers)
        ):
            raise ConfigError(
                "distill.student_layers and distill.teacher_layers are paired in order and "
                f"must have the same length, got {list(self.student_layers)} and "
                f"{list(self.teacher_layers)}"
            )
        self.p = check_temperature(p, "distill.p")

    @staticmethod
    def _chosen(explicit: tuple[str, ...] | None, names: Sequence[str], key: str) -> list[str]:
        """The explicit layers (checked to exist) or the default candidates by name."""
        if explicit is None:
            return [name for name in names if name != "embedding"]
        for name in explicit:
            if name not in names:
                raise ConfigError(
                    f"{key}: layer {name!r} does not exist; this model's layers are {list(names)}"
                )
        return list(explicit)

    def _layer_pairs(
        self, student_names: Sequence[str], teacher_names: Sequence[str]
    ) -> list[tuple[str, str]]:
        s = self._chosen(self.student_layers, student_names, "distill.student_layers")
        t = self._chosen(self.teacher_layers, teacher_names, "distill.teacher_layers")
        count = min(len(s), len(t))
        return list(zip(s[len(s) - count :], t[len(t) - count :], strict=True))

    def check_layers(
        self, student_layers: Sequence[str], teacher_layers: Sequence[Sequence[str]] | None
    ) -> None:
        """Check the layer names (shapes are checked by :meth:`bind` on a probe batch)."""
        super().check_layers(student_layers, teacher_layers)
        for names in teacher_layers or ():
            if not self._layer_pairs(student_layers, names):
                raise ConfigError(
                    "distill.student_layers: attention transfer needs convolutional feature "
                    f"maps; the student's layers are {list(student_layers)} and a teacher's "
                    f"are {list(names)}, with no map besides 'embedding' on one side "
                    "(use model/student cnn or cnn1d)"
                )

    def _map_pairs(self, inputs: DistillInputs) -> list[tuple[Tensor, Tensor]]:
        """``(student map, teacher map)`` over teachers and layer pairs, shapes checked."""
        s_features = inputs.student_features
        pairs = []
        for t_features in teacher_feature_list(inputs, self.loss_name):
            layer_pairs = self._layer_pairs(list(s_features), list(t_features))
            if self.student_layers is None and not any(map(is_map, s_features.values())):
                raise ConfigError(
                    "distill.student_layers: attention transfer needs convolutional feature "
                    "maps (B, C, L) or (B, C, H, W); the student has none (its features: "
                    f"{_describe(s_features)}; model 'mlp' has none): use student=cnn or cnn1d"
                )
            if self.teacher_layers is None and not any(map(is_map, t_features.values())):
                raise ConfigError(
                    "distill.teacher_layers: attention transfer needs convolutional feature "
                    "maps (B, C, L) or (B, C, H, W); a teacher has none (its features: "
                    f"{_describe(t_features)}; model 'mlp' has none): use model=cnn or cnn1d"
                )
            for s_layer, t_layer in layer_pairs:
                student, teacher = s_features[s_layer], t_features[t_layer]
                for key, layer, feature in (
                    ("distill.student_layers", s_layer, student),
                    ("distill.teacher_layers", t_layer, teacher),
                ):
                    if not is_map(feature):
                        raise ConfigError(
                            f"{key}: layer {layer!r} has shape {tuple(feature.shape)}, not a "
                            "spatial map (B, C, L) or (B, C, H, W); attention transfer needs "
                            "convolutional feature maps"
                        )
                if student.ndim != teacher.ndim:
                    raise ConfigError(
                        f"distill.student_layers: layer {s_layer!r} {feature_shape(student)} "
                        f"and teacher layer {t_layer!r} {feature_shape(teacher)} are maps of "
                        "different rank (1-D vs 2-D) and cannot be compared"
                    )
                pairs.append((student, teacher))
        return pairs

    def bind(self, inputs: DistillInputs) -> None:
        """Check on a probe batch that every chosen feature is a spatial map (nothing learned)."""
        self._map_pairs(inputs)

    def forward(self, inputs: DistillInputs) -> Tensor:
        """Return the mean over layer pairs and teachers of the attention distance."""
        distances = [attention_distance(s, t, self.p) for s, t in self._map_pairs(inputs)]
        return torch.stack(distances).mean()

    def extra_repr(self) -> str:
        """Show the options in ``repr``."""
        return (
            f"student_layers={self.student_layers}, teacher_layers={self.teacher_layers}, "
            f"p={self.p}"
        )
