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
    """

    epoch_losses: tuple[float, ...]
    steps: int


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
) -> DistillReport:
    """Train ``model`` in place to match ``teacher_probs`` on ``proxy_x``.

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
    epoch_losses, steps = run_epochs(
        model,
        opt,
        num_examples=n,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=dev,
        batch_loss=lambda idx: loss(model(xt[idx]), tt[idx], None if yt is None else yt[idx]),
    )
    logger.debug("distill: %d proxy examples, %d steps, epoch losses %s", n, steps, epoch_losses)
    return DistillReport(epoch_losses=tuple(epoch_losses), steps=steps)


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
