"""FitNets hint loss (Romero et al. 2015) and the feature helpers other feature losses share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedkd.distill.losses.base import DistillInputs, DistillLoss, resolve_layer
from fedkd.errors import ConfigError


def feature_shape(feature: Tensor) -> tuple[int, ...]:
    """Shape of one example's feature (the batch dimension dropped)."""
    return tuple(int(d) for d in feature.shape[1:])


def shape_tag(shape: Sequence[int]) -> str:
    """``(16, 4, 4)`` -> ``"16x4x4"``: a shape usable inside an ``nn.ModuleDict`` key."""
    return "x".join(str(d) for d in shape)


def is_map(feature: Tensor) -> bool:
    """Whether ``feature`` is a spatial map ``(B, C, L)`` or ``(B, C, H, W)``."""
    return feature.ndim in (3, 4)


def pool_to_vector(feature: Tensor) -> Tensor:
    """Global average pooling of a map over its spatial dims; vectors pass through."""
    return feature.flatten(2).mean(dim=2) if feature.ndim > 2 else feature


def vector_width(feature: Tensor) -> int:
    """Width of ``pool_to_vector(feature)`` (channels of a map, size of a vector)."""
    return int(feature.shape[1])


def new_module(build: Callable[[], nn.Module], like: Tensor) -> nn.Module:
    """Build a learned module on ``like``'s device and dtype.

    A loss may be bound again after the loop moved it to an accelerator. Initial weights
    come from the global torch RNG, which the distillation loop seeds around ``bind``.
    """
    return build().to(device=like.device, dtype=like.dtype)


def check_layer_name(value: Any, key: str) -> str:
    """A non-empty layer name, else ConfigError naming ``key``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a layer name (or 'middle'), got {value!r}")
    return value


def check_layer_list(value: Any, key: str) -> tuple[str, ...] | None:
    """``None`` or a non-empty list of layer names, else ConfigError naming ``key``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"{key} must be a non-empty list of layer names or null, got {value!r}")
    if not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key} must contain layer names (strings), got {value!r}")
    return tuple(value)


def zero_like_loss(reference: Tensor) -> Tensor:
    """A scalar zero still attached to ``reference``'s graph, so ``backward`` works."""
    return reference.sum() * 0.0


def teacher_feature_list(inputs: DistillInputs, loss_name: str) -> list[dict[str, Tensor]]:
    """``inputs.teacher_features``, or ValueError when the loop did not fill it."""
    if not inputs.teacher_features:
        raise ValueError(
            f"distill.name={loss_name!r} needs teacher_features (one feature dict per teacher "
            "model); the loop fills them when the loss sets needs_teacher_features"
        )
    return inputs.teacher_features


def missing_module_error(loss_name: str, key: str, bound: Sequence[str]) -> RuntimeError:
    """The error of a forward pass that meets a shape :meth:`DistillLoss.bind` never saw."""
    return RuntimeError(
        f"distill.name={loss_name!r} has no learned module for {key!r} (bound: {list(bound)}); "
        "call loss.bind(DistillInputs(...)) on a probe batch of this student/teacher pair "
        "before building the optimizer"
    )


def _regressor(student: Tensor, teacher: Tensor, mode: str) -> nn.Module:
    """FitNets' regressor from the student feature to the teacher's (see :class:`HintLoss`)."""
    s_channels, t_channels = vector_width(student), vector_width(teacher)
    if mode == "map" and teacher.ndim == 4:
        size = (int(teacher.shape[2]), int(teacher.shape[3]))
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(size), nn.Conv2d(s_channels, t_channels, kernel_size=1)
        )
    if mode == "map":
        length = int(teacher.shape[2])
        return nn.Sequential(
            nn.AdaptiveAvgPool1d(length), nn.Conv1d(s_channels, t_channels, kernel_size=1)
        )
    return nn.Linear(s_channels, t_channels)


class LayerPairLoss(DistillLoss):
    """Base of losses that read one student layer and one layer per teacher
    (``distill.student_layer`` / ``distill.teacher_layer``) through learned adapters."""

    needs_student_features = True
    needs_teacher_features = True
    needs_teacher_probs = False

    def __init__(self, *, student_layer: str, teacher_layer: str) -> None:
        super().__init__()
        self.student_layer = check_layer_name(student_layer, "distill.student_layer")
        self.teacher_layer = check_layer_name(teacher_layer, "distill.teacher_layer")
        self.adapters = nn.ModuleDict()

    def check_layers(
        self, student_layers: Sequence[str], teacher_layers: Sequence[Sequence[str]] | None
    ) -> None:
        """Raise ConfigError naming the option and the layer when a layer does not exist."""
        super().check_layers(student_layers, teacher_layers)
        resolve_layer(self.student_layer, student_layers, "distill.student_layer")
        for names in teacher_layers or ():
            resolve_layer(self.teacher_layer, names, "distill.teacher_layer")


class HintLoss(LayerPairLoss):
    r"""FitNets hint loss of Romero et al. (2015), "FitNets: Hints for Thin Deep Nets",
    arXiv:1412.6550.

    A learned regressor ``r`` maps the student's guided layer ``s`` onto the teacher's hint
    layer ``t`` and the loss is their mean squared error, averaged over the ``K`` teacher
    models (teacher features are constants):

    .. math::
        L = \frac{1}{K} \sum_{k=1}^{K} \mathrm{mean}\big(r_k(s) - t_k\big)^2

    The regressor is created by :meth:`bind` from one probe batch:

    - both features are maps of the same rank (``(B, C, L)`` or ``(B, C, H, W)``): adaptive
      average pooling of the student map to the teacher's spatial size, then a 1x1
      convolution from the student's to the teacher's channels (the paper's convolutional
      regressor);
    - otherwise (a vector on either side, or maps of different rank): maps are reduced to
      vectors by global average pooling and ``r`` is ``nn.Linear(student_dim, teacher_dim)``.

    Regressors live in an ``nn.ModuleDict`` keyed by
    ``"<student_layer>:<shape>-><teacher_layer>:<shape>"``, so one loss object serves several
    student architectures and teachers of different architectures. The optimizer must
    include ``loss.parameters()``.

    Needs teacher models (their features): ``strategy=feddf`` with
    ``strategy.teacher_from=weights``.

    YAML: ``distill: {name: hint, student_layer: middle, teacher_layer: middle}``.

    Parameters
    ----------
    student_layer : str
        The student's guided layer: a feature name, ``"middle"`` (default,
        ``feature_names[len // 2]``, FitNets guides a middle layer) or ``"embedding"``.
    teacher_layer : str
        The teachers' hint layer, resolved the same way per teacher (default ``"middle"``).

    Raises
    ------
    ConfigError
        A layer option that is not a string; from :meth:`check_layers`, a layer that does
        not exist (naming ``distill.student_layer`` / ``distill.teacher_layer``, the layer
        and the available ones) or no teacher models.
    """

    name = "hint"

    def __init__(self, *, student_layer: str = "middle", teacher_layer: str = "middle") -> None:
        super().__init__(student_layer=student_layer, teacher_layer=teacher_layer)

    def _pairs(self, inputs: DistillInputs) -> list[tuple[str, Tensor, Tensor, str]]:
        """``(key, student_feature, teacher_feature, mode)`` per teacher."""
        s_features = inputs.student_features
        s_layer = resolve_layer(self.student_layer, list(s_features), "distill.student_layer")
        student = s_features[s_layer]
        pairs = []
        for t_features in teacher_feature_list(inputs, self.loss_name):
            t_layer = resolve_layer(self.teacher_layer, list(t_features), "distill.teacher_layer")
            teacher = t_features[t_layer]
            mode = "map" if is_map(student) and student.ndim == teacher.ndim else "vector"
            key = (
                f"{s_layer}:{shape_tag(feature_shape(student))}"
                f"->{t_layer}:{shape_tag(feature_shape(teacher))}"
            )
            pairs.append((key, student, teacher, mode))
        return pairs

    def bind(self, inputs: DistillInputs) -> None:
        """Create the regressor of every (student shape, teacher shape) pair not seen yet."""
        for key, student, teacher, mode in self._pairs(inputs):
            if key in self.adapters:
                continue
            regressor = partial(_regressor, student, teacher, mode)
            self.adapters[key] = new_module(regressor, student)

    def forward(self, inputs: DistillInputs) -> Tensor:
        """Return the mean over teachers of the MSE between regressed student and teacher."""
        losses = []
        for key, student, teacher, mode in self._pairs(inputs):
            if key not in self.adapters:
                raise missing_module_error(self.loss_name, key, list(self.adapters))
            source = student if mode == "map" else pool_to_vector(student)
            target = teacher.detach() if mode == "map" else pool_to_vector(teacher.detach())
            prediction = self.adapters[key](source)
            losses.append(F.mse_loss(prediction, target.to(prediction.dtype)))
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        """Show the layer options in ``repr``."""
        return f"student_layer={self.student_layer!r}, teacher_layer={self.teacher_layer!r}"
