"""Server-side distillation: the student (or any server model) fitted to teacher targets.

:class:`ServerDistillation` holds the ``strategy.distill_*`` options and the run's loss;
:meth:`ServerDistillation.fit` distills one model on one round's proxy rows and returns the
numbers for the round's metrics row. It never calls back into the strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedkd.distill import agreement, distill
from fedkd.distill.losses import DistillInputs, DistillLoss
from fedkd.errors import ConfigError
from fedkd.models import FedKDModel
from fedkd.train import OPTIMIZER_NAMES, evaluate, seeded_rng
from strategies.core.options import check_types

if TYPE_CHECKING:
    from fedkd.distill.augment import Augmentation


@dataclass(frozen=True)
class DistillOptions:
    """The server's distillation settings (``strategy.distill_*``).

    Parameters
    ----------
    epochs : int
        Passes over the round's proxy rows (``distill_epochs``; 0: no distillation).
    batch_size : int
        Mini-batch size (``distill_batch_size``).
    lr : float
        Learning rate (``distill_lr``).
    optimizer : str
        ``adam`` or ``sgd`` (``distill_optimizer``).
    validation_fraction : float
        Share of the round's proxy rows held out to validate on (``[0, 1)``).
    patience : int
        Early stopping after this many epochs without improvement (0: off; needs a
        validation split).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    optimizer: str = "adam"
    validation_fraction: float = 0.0
    patience: int = 0

    def __post_init__(self) -> None:
        check_types(self, prefix="strategy.distill_")
        if not self.lr > 0:
            raise ConfigError(f"strategy.distill_lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"strategy.distill_batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ConfigError(
                f"strategy.distill_optimizer must be one of {list(OPTIMIZER_NAMES)}, "
                f"got {self.optimizer!r}"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                "strategy.distill_validation_fraction must be in [0, 1), "
                f"got {self.validation_fraction}"
            )
        if self.patience < 0:
            raise ConfigError(f"strategy.distill_patience must be >= 0, got {self.patience}")
        if self.patience > 0 and self.validation_fraction == 0.0:
            raise ConfigError(
                "strategy.distill_patience (early stopping) needs a validation split of the "
                "proxy: set strategy.distill_validation_fraction > 0"
            )
        if self.epochs < 0:
            raise ConfigError(f"strategy.distill_epochs must be >= 0, got {self.epochs}")


def round_seed(seed: int, server_round: int, *stream: int) -> int:
    """A 32-bit seed derived from ``(seed, round, *stream)``; streams keep uses independent."""
    return int(np.random.SeedSequence([seed, server_round, *stream]).generate_state(1)[0])


def validation_split(
    size: int, *, fraction: float, seed: int, server_round: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a round's proxy rows to distill on and to validate on.

    The held-out part (``fraction``) is drawn per round from ``(seed, round)``; it is never
    trained on in that round.
    """
    indices = np.arange(size)
    if fraction == 0.0 or size < 2:
        return indices, indices[:0]
    rng = np.random.default_rng([seed, server_round, 3])
    shuffled = rng.permutation(size)
    held_out = min(size - 1, max(1, round(fraction * size)))
    return np.sort(shuffled[held_out:]), np.sort(shuffled[:held_out])


@dataclass
class ServerDistillation:
    """Distills server models toward teacher targets on proxy rows.

    Attributes
    ----------
    options : DistillOptions
        The ``strategy.distill_*`` settings.
    loss : nn.Module
        The run's ``distill`` loss (shared by every server model it distills).
    device : torch.device
        Where server-side training runs.
    seed : int
        The run's seed (every round's seeds derive from it).
    augmentation : Augmentation, optional
        Transfer-data augmentation of proxy batches.
    """

    options: DistillOptions
    loss: nn.Module
    device: torch.device
    seed: int
    augmentation: Augmentation | None = None

    def fit(
        self,
        model: FedKDModel,
        server_round: int,
        inputs: np.ndarray,
        targets: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        teachers: Sequence[nn.Module] = (),
        test: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Distill ``model`` toward ``targets`` on ``inputs``. ``teachers`` are the models
        feature-matching losses read.

        With ``test`` (the student's test set), returns the metrics of the round's row: the
        test accuracy before, the loss, the curves and the agreement with the targets after;
        without (another server model, e.g. FedDF's per-architecture prototypes), nothing.
        """
        metrics: dict[str, Any] = {}
        if test is not None:
            _, metrics["student_accuracy_before_distill"] = evaluate(
                model, test[0], test[1], device=self.device
            )
        options = self.options
        if options.epochs > 0:
            train, held_out = validation_split(
                len(inputs),
                fraction=options.validation_fraction,
                seed=self.seed,
                server_round=server_round,
            )
            report = distill(
                model,
                inputs[train],
                targets[train],
                loss=self.loss,
                epochs=options.epochs,
                batch_size=options.batch_size,
                lr=options.lr,
                optimizer=options.optimizer,
                proxy_y=None if labels is None else labels[train],
                seed=round_seed(self.seed, server_round, 1),
                device=self.device,
                validation_x=inputs[held_out] if len(held_out) else None,
                validation_targets=targets[held_out] if len(held_out) else None,
                patience=options.patience,
                teachers=teachers,
                augmentation=self.augmentation,
            )
            if test is None:
                return metrics
            metrics["distill_loss"] = report.epoch_losses[-1]
            metrics["distill_curve"] = list(report.epoch_losses)
            if report.validation_agreement:
                metrics["distill_validation_curve"] = list(report.validation_agreement)
                metrics["distill_best_epoch"] = report.best_epoch
                metrics["distill_stopped_early"] = report.stopped_early
        if test is not None:
            metrics["proxy_agreement"] = agreement(model, inputs, targets)
        return metrics

    def probe_bind(
        self,
        loss: DistillLoss,
        student: FedKDModel,
        teachers: Sequence[FedKDModel],
        *,
        input_shape: tuple[int, ...],
    ) -> None:
        """Create ``loss``'s learned modules on a seeded probe batch (catches shape problems,
        e.g. attention maps on an MLP, before any client runs)."""
        device = self.device
        x = torch.zeros((2, *input_shape), device=device)
        with seeded_rng(self.seed, device), torch.no_grad():
            logits, features = student.to(device).forward_features(x)
            teacher_features = (
                [t.to(device).forward_features(x)[1] for t in teachers]
                if loss.needs_teacher_features
                else []
            )
            loss.bind(
                DistillInputs(
                    student_logits=logits,
                    teacher_probs=torch.softmax(logits, dim=1),
                    labels=torch.zeros(2, dtype=torch.long, device=device),
                    student_features=features,
                    teacher_features=teacher_features,
                )
            )
        loss.to(device)
