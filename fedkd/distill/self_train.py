"""Self-distillation on one client's private data: BYOT local training and born-again
generations."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from fedkd.distill.loop import distill
from fedkd.distill.losses import KDLoss, build_loss
from fedkd.distill.losses.base import check_temperature, check_unit
from fedkd.errors import ConfigError
from fedkd.setup import TrainSettings
from fedkd.train import predict_probs, seeded_rng

logger = logging.getLogger(__name__)

BORN_AGAIN_OPTIONS = ("generations", "temperature", "alpha")


def check_born_again(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate ``client.born_again`` and fill its defaults (``temperature`` 1.0, ``alpha`` 0.5).

    Raises
    ------
    ConfigError
        Naming ``client.born_again.<key>``.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"client.born_again must be a mapping or null, got {spec!r}")
    unknown = sorted(set(spec) - set(BORN_AGAIN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"client.born_again.{unknown[0]}: unknown option; allowed: {list(BORN_AGAIN_OPTIONS)}"
        )
    generations = spec.get("generations", 1)
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 0:
        raise ConfigError(
            f"client.born_again.generations must be an integer >= 0, got {generations!r}"
        )
    return {
        "generations": generations,
        "temperature": check_temperature(
            spec.get("temperature", 1.0), "client.born_again.temperature"
        ),
        "alpha": check_unit(spec.get("alpha", 0.5), "client.born_again.alpha"),
    }


def train_self_distilled(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    options: dict[str, Any],
    settings: TrainSettings,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """Local training with BYOT self-distillation (the ``self`` loss on labels alone).

    ``settings`` gives the epochs, batch size, learning rate, optimizer and weight decay;
    the distillation loop's SGD uses its own momentum (0.9), not ``settings.momentum``.
    The early-exit heads live in a fresh loss object each call, so nothing one client
    learns leaks into another client's round in the same process. Returns the last
    epoch's mean loss.
    """
    loss = build_loss("self", **options)
    report = distill(
        model,
        x,
        None,
        loss=loss,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        optimizer=settings.optimizer,
        proxy_y=y,
        seed=seed,
        device=device,
        weight_decay=settings.weight_decay,
    )
    return report.epoch_losses[-1]


def reinitialize(model: nn.Module, *, seed: int) -> None:
    """Fresh seeded initialisation of every layer that has ``reset_parameters``."""
    with seeded_rng(seed, next(model.parameters()).device):
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def born_again(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    generations: int,
    temperature: float,
    alpha: float,
    settings: TrainSettings,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    r"""Born-again networks (Furlanello et al. 2018, arXiv:1805.04770) on one client.

    Starting from the trained ``model`` (generation 0), each generation ``g = 1..G``
    records the previous generation's predictions ``p_{g-1}`` on ``x``, re-initialises the
    same architecture (seed ``seed + g``) and trains it with
    ``alpha T^2 KL(p_{g-1,T} || q_T) + (1 - alpha) CE(q, y)`` (the ``kd`` loss) with
    ``settings`` (as in :func:`train_self_distilled`). The model ends as the last
    generation. Returns the last epoch's mean loss (NaN for ``G = 0``).
    """
    last = float("nan")
    for generation in range(1, generations + 1):
        teacher = predict_probs(model, x, device=device)
        reinitialize(model, seed=seed + generation)
        report = distill(
            model,
            x,
            teacher,
            loss=KDLoss(temperature=temperature, alpha=alpha),
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            optimizer=settings.optimizer,
            proxy_y=y,
            seed=seed + generation,
            device=device,
            weight_decay=settings.weight_decay,
        )
        last = report.epoch_losses[-1]
        logger.debug("born-again generation %d: loss %.4f", generation, last)
    return last
