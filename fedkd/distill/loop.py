"""Server/client-side distillation loop on a proxy set with teacher probabilities."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from fedkd.distill.losses import DistillInputs, DistillLoss
from fedkd.train import (
    as_float_tensor,
    as_label_tensor,
    check_hparams,
    make_optimizer,
    predict_probs,
    run_epochs,
    seeded_rng,
)

if TYPE_CHECKING:
    from fedkd.distill.augment import Augmentation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillReport:
    """Result of :func:`distill`.

    Attributes
    ----------
    epoch_losses : tuple of float
        Mean loss over the proxy examples for each epoch (training mode, running average
        while the model updates).
    steps : int
        Optimizer steps taken.
    validation_agreement : tuple of float
        Agreement with the teacher on the validation examples after each epoch (empty
        without validation data).
    best_epoch : int
        The epoch (1-based) with the highest validation agreement; the model holds its
        weights when early stopping was on. 0 without validation data.
    stopped_early : bool
        Whether training stopped before ``epochs`` because validation agreement had not
        improved for ``patience`` epochs.
    """

    epoch_losses: tuple[float, ...]
    steps: int
    validation_agreement: tuple[float, ...] = ()
    best_epoch: int = 0
    stopped_early: bool = False


def distill(
    model: nn.Module,
    proxy_x: np.ndarray,
    teacher_probs: np.ndarray | None,
    *,
    loss: nn.Module,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    momentum: float = 0.9,
    proxy_y: np.ndarray | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    weight_decay: float = 0.0,
    validation_x: np.ndarray | None = None,
    validation_targets: np.ndarray | None = None,
    patience: int = 0,
    teachers: Sequence[nn.Module] = (),
    augmentation: Augmentation | None = None,
) -> DistillReport:
    """Train ``model`` in place to match ``teacher_probs`` on ``proxy_x``.

    Every mini-batch goes through ``augmentation`` (if any), then the student (with its
    intermediate features when the loss needs them) and, for losses that match the
    teacher's features, every model in ``teachers`` (eval mode, no gradients), and the loss
    receives all of it as :class:`~fedkd.distill.losses.DistillInputs`. Modules the loss
    learns (adapters, early-exit heads) are created on a probe batch and trained with the
    student. ``loss.set_progress`` is told the epoch fraction (temperature/alpha schedules).

    With ``validation_x``/``validation_targets`` (held-out proxy examples and their teacher
    targets) the agreement with the teacher is measured after every epoch; with
    ``patience > 0`` training stops once it has not improved for ``patience`` epochs and the
    model is reset to the best epoch's weights (early stopping as in FedDF).

    YAML (keys named in errors): ``distill: {epochs: 2, batch_size: 64, lr: 0.001,
    optimizer: adam, weight_decay: 0.0}``.

    Parameters
    ----------
    model : nn.Module
        Student returning logits (a :class:`~fedkd.models.FedKDModel` when the loss needs
        features); moved to ``device``; its train/eval mode is restored.
    proxy_x : np.ndarray
        Proxy inputs ``(N, *input_shape)``.
    teacher_probs : np.ndarray or None
        ``(N, C)`` teacher probabilities (e.g. :func:`fedkd.distill.mean_targets`); ``None``
        for losses that can learn from labels alone (self-distillation), then ``proxy_y``
        is required.
    loss : nn.Module
        A :class:`~fedkd.distill.losses.DistillLoss`, e.g. from
        :func:`fedkd.distill.build_loss`.
    epochs, batch_size : int
        Passes over the proxy set and mini-batch size.
    lr : float
        Learning rate.
    optimizer : {"adam", "sgd"}
        The optimizer.
    momentum : float
        SGD's momentum (default 0.9; Adam ignores it).
    proxy_y : np.ndarray, optional
        Integer labels ``(N,)`` passed to the loss; ``None`` for unlabeled proxy data.
    seed : int
        Seeds the shuffle generator, augmentation, the loss's learned modules and (via a
        forked RNG) dropout.
    device : str or torch.device
        Device to train on.
    weight_decay : float
        Optimizer weight decay.
    teachers : sequence of nn.Module
        Teacher models whose features feature-matching losses read (FedDF's client models).
    augmentation : Augmentation, optional
        Applied to every mini-batch (see :mod:`fedkd.distill.augment`). Mixup mixes the
        teacher targets too, and hard labels are then not used.

    Returns
    -------
    DistillReport

    Raises
    ------
    ValueError
        Empty proxy set, mismatched lengths/shapes, a feature loss without teachers.
    ConfigError
        Invalid hyper-parameters (``distill.<key>``), unknown ``distill.optimizer``, layers
        a loss reads that the models do not have.
    """
    check_hparams("distill", epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
    n = len(proxy_x)
    if n == 0:
        raise ValueError("proxy_x is empty: need at least one proxy example")
    if teacher_probs is not None and (np.ndim(teacher_probs) != 2 or len(teacher_probs) != n):
        raise ValueError(f"teacher_probs must be ({n}, C), got shape {np.shape(teacher_probs)}")
    if proxy_y is not None and len(proxy_y) != n:
        raise ValueError(f"proxy_y must have length {n}, got {len(proxy_y)}")
    if teacher_probs is None and proxy_y is None:
        raise ValueError("distill needs teacher_probs or proxy_y (labels)")
    if patience < 0:
        raise ValueError(f"patience must be >= 0, got {patience}")
    watch = validation_x is not None and validation_targets is not None and len(validation_x) > 0
    if patience > 0 and not watch:
        raise ValueError("early stopping (patience > 0) needs validation_x and validation_targets")
    needs_student_features = bool(getattr(loss, "needs_student_features", False))
    needs_teacher_features = bool(getattr(loss, "needs_teacher_features", False))
    if needs_teacher_features and not teachers:
        raise ValueError(
            f"loss {type(loss).__name__} matches teacher features but no teacher models were given"
        )
    mix_targets = augmentation is not None and augmentation.changes_targets
    if mix_targets and teacher_probs is None:
        raise ValueError("mixup mixes teacher targets: it needs teacher_probs")

    dev = torch.device(device)
    model.to(dev)
    teacher_models = list(teachers) if needs_teacher_features else []
    for teacher in teacher_models:
        teacher.to(dev)
    xt = as_float_tensor(proxy_x, dev)
    tt = as_float_tensor(teacher_probs, dev) if teacher_probs is not None else None
    yt = as_label_tensor(proxy_y, dev) if proxy_y is not None else None
    augment_generator = torch.Generator().manual_seed(seed + 1)

    def inputs_for(idx: Tensor) -> DistillInputs:
        x = xt[idx]
        targets = None if tt is None else tt[idx]
        labels = None if yt is None else yt[idx]
        if augmentation is not None:
            x, mixed = augmentation(
                x, targets if targets is not None else _dummy_targets(x), augment_generator
            )
            if mix_targets:
                targets, labels = mixed, None  # mixed targets have no single hard label
        student_features: dict[str, Tensor] = {}
        if needs_student_features:
            logits, student_features = model.forward_features(x)  # type: ignore[operator]
        else:
            logits = model(x)
        teacher_features: list[dict[str, Tensor]] = []
        if teacher_models:
            with torch.no_grad():
                teacher_features = [t.forward_features(x)[1] for t in teacher_models]  # type: ignore[operator]
        return DistillInputs(
            student_logits=logits,
            teacher_probs=targets,
            labels=labels,
            student_features=student_features,
            teacher_features=teacher_features,
        )

    teacher_modes = [t.training for t in teacher_models]
    for teacher in teacher_models:
        teacher.eval()
    try:
        if isinstance(loss, DistillLoss) and type(loss).bind is not DistillLoss.bind:
            # Learned parts of the loss are sized on a probe batch, seeded like the rest.
            with seeded_rng(seed, dev), torch.no_grad():
                loss.bind(inputs_for(torch.arange(min(n, 2), device=dev)))
        loss.to(dev)
        opt = make_optimizer(
            optimizer,
            [*model.parameters(), *loss.parameters()],
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            key="distill.optimizer",
        )
        tracker = _ValidationTracker(model, patience=patience)

        def before_epoch(epoch: int) -> None:
            if isinstance(loss, DistillLoss):
                loss.set_progress(epoch / (epochs - 1) if epochs > 1 else 0.0)

        def after_epoch(epoch: int) -> bool:
            score = agreement(model, validation_x, validation_targets, device=dev)  # type: ignore[arg-type]
            return tracker.update(epoch, score)

        epoch_losses, steps = run_epochs(
            model,
            opt,
            num_examples=n,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            device=dev,
            batch_loss=lambda idx: loss(inputs_for(idx)),
            after_epoch=after_epoch if watch else None,
            before_epoch=before_epoch,
        )
    finally:
        for teacher, mode in zip(teacher_models, teacher_modes, strict=True):
            teacher.train(mode)
    tracker.restore_best()
    logger.debug("distill: %d proxy examples, %d steps, epoch losses %s", n, steps, epoch_losses)
    return DistillReport(
        epoch_losses=tuple(epoch_losses),
        steps=steps,
        validation_agreement=tuple(tracker.curve),
        best_epoch=tracker.best_epoch,
        stopped_early=len(epoch_losses) < epochs,
    )


def _dummy_targets(x: Tensor) -> Tensor:
    """Placeholder targets for augmentations of a batch that has none (labels only)."""
    return torch.zeros((x.shape[0], 1), device=x.device)


class _ValidationTracker:
    """Validation agreement per epoch, the best epoch, and its weights when stopping early."""

    def __init__(self, model: nn.Module, *, patience: int) -> None:
        self.model = model
        self.patience = patience
        self.curve: list[float] = []
        self.best_score = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale_epochs = 0

    def update(self, epoch: int, score: float) -> bool:
        """Record one epoch's score; True when training should stop."""
        self.curve.append(score)
        if score > self.best_score:
            self.best_score, self.best_epoch, self.stale_epochs = score, epoch + 1, 0
            if self.patience > 0:
                self.best_state = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
        else:
            self.stale_epochs += 1
        return self.patience > 0 and self.stale_epochs >= self.patience

    def restore_best(self) -> None:
        """Early stopping keeps the best epoch's weights, not the last epoch's."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def agreement(
    model: nn.Module,
    proxy_x: np.ndarray,
    teacher_probs: np.ndarray,
    *,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> float:
    """Fraction of proxy examples where ``argmax(student) == argmax(teacher)`` (eval mode).

    Raises
    ------
    ValueError
        If ``teacher_probs`` is not ``(len(proxy_x), C)`` or ``proxy_x`` is empty.
    """
    n = len(proxy_x)
    if n == 0:
        raise ValueError("proxy_x is empty: need at least one proxy example")
    if np.ndim(teacher_probs) != 2 or len(teacher_probs) != n:
        raise ValueError(f"teacher_probs must be ({n}, C), got shape {np.shape(teacher_probs)}")
    student = predict_probs(model, proxy_x, batch_size=batch_size, device=device)
    return float(np.mean(student.argmax(axis=1) == np.asarray(teacher_probs).argmax(axis=1)))
