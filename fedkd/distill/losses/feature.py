"""Embedding matching (MSE, cosine) and relational KD (Park et al. 2019) on teacher features."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedkd.distill.losses.base import DistillInputs, resolve_layer
from fedkd.distill.losses.hint import (
    LayerPairLoss,
    missing_module_error,
    new_module,
    pool_to_vector,
    teacher_feature_list,
    vector_width,
    zero_like_loss,
)
from fedkd.errors import ConfigError

FEATURE_MODES = ("mse", "cosine", "rkd_distance", "rkd_angle")

# Floor of squared distances before the square root: keeps gradients finite when two
# examples (or an example and itself) coincide.
_EPS = 1e-12


def _pairwise_distances(vectors: Tensor) -> Tensor:
    """Distances ``||x_i - x_j||`` over the ordered pairs ``i != j``, shape ``(B(B-1),)``."""
    n = vectors.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=vectors.device)
    squared = (vectors.unsqueeze(1) - vectors.unsqueeze(0)).pow(2).sum(dim=2)
    return squared[off_diagonal].clamp_min(_EPS).sqrt()


def rkd_distance_potential(vectors: Tensor) -> Tensor:
    """Park et al.'s distance potential: pairwise distances divided by their mean."""
    distances = _pairwise_distances(vectors)
    return distances / distances.mean().clamp_min(_EPS)


def rkd_angle_potential(vectors: Tensor) -> Tensor:
    """Park et al.'s angle potential ``cos ∠x_i x_j x_k = <e_ij, e_kj>`` over distinct triplets.

    ``e_ij = (x_i - x_j) / ||x_i - x_j||``; returns the ``B(B-1)(B-2)`` cosines of the
    triplets with ``i, j, k`` pairwise distinct (the others are 0 or 1 for every network).
    """
    n = vectors.shape[0]
    # differences[j, i] = x_i - x_j: unit vectors from vertex j.
    differences = vectors.unsqueeze(0) - vectors.unsqueeze(1)
    norms = differences.pow(2).sum(dim=2, keepdim=True).clamp_min(_EPS).sqrt()
    units = differences / norms
    cosines = torch.einsum("jid,jkd->jik", units, units)
    index = torch.arange(n, device=vectors.device)
    j, i, k = index[:, None, None], index[None, :, None], index[None, None, :]
    distinct = (i != j) & (k != j) & (i != k)
    return cosines[distinct]


class FeatureLoss(LayerPairLoss):
    r"""Feature distillation on one layer: embedding matching or relational KD.

    With student feature ``s`` and teacher features ``t_k`` of ``K`` teacher models (maps
    are reduced to vectors by global average pooling; teacher features are constants), the
    loss is averaged over the teachers:

    .. math::
        L = \frac{1}{K} \sum_{k=1}^{K} \ell(s, t_k)

    where ``ell`` is, by ``mode``:

    - ``mse`` (default): ``mean((a(s) - t)^2)``, embedding matching (as in FitNets,
      Romero et al. 2015, arXiv:1412.6550, on the penultimate layer);
    - ``cosine``: ``mean_b(1 - cos(a(s)_b, t_b))``, matching directions only;
    - ``rkd_distance``: Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation",
      arXiv:1904.05068, distance-wise loss: ``psi(x_i, x_j) = ||x_i - x_j|| / mu`` with
      ``mu`` the mean distance over the batch's ordered pairs ``i != j``, and
      ``ell = mean_{i != j} huber(psi_s(i, j) - psi_t(i, j))``;
    - ``rkd_angle``: the same paper's angle-wise loss, ``psi(x_i, x_j, x_k) = <e_ij, e_kj>``
      with ``e_ij = (x_i - x_j) / ||x_i - x_j||``, and ``ell`` the mean Huber loss over the
      triplets with pairwise distinct indices.

    ``huber`` is the smooth L1 loss with ``delta = 1`` (the paper's). The paper weights the
    two RKD terms by 25 and 50 on top of the task loss; here such weights go in
    ``distill: {name: combo, terms: [...]}``. RKD compares relations inside the batch, so it
    needs no adapter and the widths may differ; a batch of one example (no pairs) or fewer
    than three (no triplets, angle) gives zero.

    ``a`` is ``nn.Linear(student_dim, teacher_dim)`` when the widths differ (created by
    :meth:`bind`, kept in an ``nn.ModuleDict`` keyed by layer and width, so the optimizer
    must include ``loss.parameters()``) and the identity otherwise.

    Needs teacher models (their features): ``strategy=feddf`` with
    ``strategy.teacher_from=weights``.

    YAML: ``distill: {name: feature, mode: mse, student_layer: embedding,
    teacher_layer: embedding}``.

    Parameters
    ----------
    mode : {"mse", "cosine", "rkd_distance", "rkd_angle"}
        The comparison (default ``mse``).
    student_layer, teacher_layer : str
        Feature names, ``"middle"`` or ``"embedding"`` (default ``"embedding"``, the
        penultimate vector).

    Raises
    ------
    ConfigError
        An unknown ``mode``; from :meth:`check_layers`, a layer that does not exist (naming
        ``distill.student_layer`` / ``distill.teacher_layer``) or no teacher models.
    """

    name = "feature"

    def __init__(
        self,
        *,
        mode: str = "mse",
        student_layer: str = "embedding",
        teacher_layer: str = "embedding",
    ) -> None:
        if mode not in FEATURE_MODES:
            raise ConfigError(f"distill.mode must be one of {FEATURE_MODES}, got {mode!r}")
        super().__init__(student_layer=student_layer, teacher_layer=teacher_layer)
        self.mode = mode

    def _pairs(self, inputs: DistillInputs) -> list[tuple[str | None, Tensor, Tensor]]:
        """``(adapter key or None, student vectors, teacher vectors)`` per teacher."""
        s_features = inputs.student_features
        s_layer = resolve_layer(self.student_layer, list(s_features), "distill.student_layer")
        student = pool_to_vector(s_features[s_layer])
        pairs: list[tuple[str | None, Tensor, Tensor]] = []
        for t_features in teacher_feature_list(inputs, self.loss_name):
            t_layer = resolve_layer(self.teacher_layer, list(t_features), "distill.teacher_layer")
            teacher = pool_to_vector(t_features[t_layer].detach()).to(student.dtype)
            s_width, t_width = vector_width(student), vector_width(teacher)
            needs_adapter = self.mode in ("mse", "cosine") and s_width != t_width
            key = f"{s_layer}:{s_width}->{t_layer}:{t_width}" if needs_adapter else None
            pairs.append((key, student, teacher))
        return pairs

    def bind(self, inputs: DistillInputs) -> None:
        """Create the width adapters (mse/cosine with different widths) not seen yet."""
        for key, student, teacher in self._pairs(inputs):
            if key is not None and key not in self.adapters:
                linear = partial(nn.Linear, vector_width(student), vector_width(teacher))
                self.adapters[key] = new_module(linear, student)

    def _compare(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.mode == "mse":
            return F.mse_loss(student, teacher)
        if self.mode == "cosine":
            return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()
        if self.mode == "rkd_distance":
            if student.shape[0] < 2:
                return zero_like_loss(student)
            return F.smooth_l1_loss(
                rkd_distance_potential(student), rkd_distance_potential(teacher)
            )
        if student.shape[0] < 3:
            return zero_like_loss(student)
        return F.smooth_l1_loss(rkd_angle_potential(student), rkd_angle_potential(teacher))

    def forward(self, inputs: DistillInputs) -> Tensor:
        """Return the mean over teachers of the chosen comparison (see the class notes)."""
        losses = []
        for key, student, teacher in self._pairs(inputs):
            adapted = student
            if key is not None:
                if key not in self.adapters:
                    raise missing_module_error(self.loss_name, key, list(self.adapters))
                adapted = self.adapters[key](student)
            losses.append(self._compare(adapted, teacher))
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        """Show the options in ``repr``."""
        return (
            f"mode={self.mode!r}, student_layer={self.student_layer!r}, "
            f"teacher_layer={self.teacher_layer!r}"
        )
