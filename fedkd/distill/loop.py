"""Server/client-side distillation loop on a proxy set with teacher probabilities."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedkd.train import (
    as_float_tensor,
    as_label_tensor,
    check_hparams,
    make_optimizer,
    predict_probs,
    run_epochs,
)

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
    teacher_probs: np.ndarray,
    *,
    loss: nn.Module,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    proxy_y: np.ndarray | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    weight_decay: float = 0.0,
    validation_x: np.ndarray | None = None,
    validation_targets: np.ndarray | None = None,
    patience: int = 0,
) -> DistillReport:
    """Train ``model`` in place to match ``teacher_probs`` on ``proxy_x``.

    With ``validation_x``/``validation_targets`` (held-out proxy examples and their teacher
    targets) the agreement with the teacher is measured after every epoch; with
    ``patience > 0`` training stops once it has not improved for ``patience`` epochs and the
    model is reset to the best epoch's weights (early stopping as in FedDF).

    YAML (keys named in errors): ``distill: {epochs: 2, batch_size: 64, lr: 0.001,
    optimizer: adam, weight_decay: 0.0}``.

    Parameters
    ----------
    model : nn.Module
        Student returning logits; moved to ``device``; its train/eval mode is restored.
    proxy_x : np.ndarray
        Proxy inputs ``(N, *input_shape)``.
    teacher_probs : np.ndarray
        ``(N, C)`` teacher probabilities (e.g. :func:`fedkd.distill.mean_targets`).
    loss : nn.Module
        Called as ``loss(student_logits, teacher_probs, labels)``, e.g. from
        :func:`fedkd.distill.build_loss`.
    epochs, batch_size : int
        Passes over the proxy set and mini-batch size.
    lr : float
        Learning rate.
    optimizer : {"adam", "sgd"}
        SGD uses momentum 0.9.
    proxy_y : np.ndarray, optional
        Integer labels ``(N,)`` passed to the loss; ``None`` for unlabeled proxy data.
    seed : int
        Seeds the shuffle generator and (via a forked RNG) dropout.
    device : str or torch.device
        Device to train on.
    weight_decay : float
        Optimizer weight decay.

    Returns
    -------
    DistillReport

    Raises
    ------
    ValueError
        Empty proxy set or mismatched lengths/shapes.
    ConfigError
        Invalid hyper-parameters (``distill.<key>``), unknown ``distill.optimizer``.
    """
    check_hparams("distill", epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
    n = len(proxy_x)
    if n == 0:
        raise ValueError("proxy_x is empty: need at least one proxy example")
    if np.ndim(teacher_probs) != 2 or len(teacher_probs) != n:
        raise ValueError(f"teacher_probs must be ({n}, C), got shape {np.shape(teacher_probs)}")
    if proxy_y is not None and len(proxy_y) != n:
        raise ValueError(f"proxy_y must have length {n}, got {len(proxy_y)}")
    dev = torch.device(device)
    model.to(dev)
    xt = as_float_tensor(proxy_x, dev)
    tt = as_float_tensor(teacher_probs, dev)
    yt = as_label_tensor(proxy_y, dev) if proxy_y is not None else None
    opt = make_optimizer(
        optimizer,
        model.parameters(),
        lr=lr,
        momentum=0.9,
        weight_decay=weight_decay,
        key="distill.optimizer",
    )
    if patience < 0:
        raise ValueError(f"patience must be >= 0, got {patience}")
    watch = validation_x is not None and validation_targets is not None and len(validation_x) > 0
    if patience > 0 and not watch:
        raise ValueError("early stopping (patience > 0) needs validation_x and validation_targets")
    tracker = _ValidationTracker(model, patience=patience)

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
        batch_loss=lambda idx: loss(model(xt[idx]), tt[idx], None if yt is None else yt[idx]),
        after_epoch=after_epoch if watch else None,
    )
    tracker.restore_best()
    logger.debug("distill: %d proxy examples, %d steps, epoch losses %s", n, steps, epoch_losses)
    return DistillReport(
        epoch_losses=tuple(epoch_losses),
        steps=steps,
        validation_agreement=tuple(tracker.curve),
        best_epoch=tracker.best_epoch,
        stopped_early=len(epoch_losses) < epochs,
    )


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
