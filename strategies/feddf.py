"""FedDF: FedAvg initialisation, then server-side ensemble distillation on an unlabeled proxy."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from fedkd.distill import agreement, distill, mean_targets
from fedkd.errors import ConfigError
from strategies.base import RunAssets, round_seed, student_arrays
from strategies.fedavg import FedAvg

TEACHER_SOURCES = ("weights", "predictions")


class FedDF(FedAvg):
    """Ensemble distillation for robust model fusion (Lin, Kong, Stich & Jaggi, NeurIPS 2020).

    Round ``t``::

        send w_t to the sampled clients S_t; each trains locally -> w_k (n_k examples)
        student <- sum_k n_k w_k / sum_k n_k                 # FedAvg initialisation
        teacher(x) = mean_k softmax(f(x; w_k))               # ensemble on the proxy
        for distill_epochs over the unlabeled proxy:
            minimise  distill_loss(student(x), teacher(x))   # KD, T^2-scaled KL
        w_{t+1} <- student

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies
        See :class:`strategies.base.FedKDStrategy`.
    distill_epochs : int
        Passes over the proxy per round (default 20; the paper uses a fixed step budget
        with early stopping).
    distill_batch_size : int
        Proxy mini-batch size (default 64).
    distill_lr : float
        Learning rate of the server Adam (default 1e-4; the paper uses 1e-3 with early
        stopping on a much larger proxy, while a few hundred proxy examples are over-fit
        at 1e-3: on digits the student then ends ~5 points below the ensemble).
    distill_optimizer : str
        ``"adam"`` (default) or ``"sgd"``.
    teacher_from : str
        ``"weights"`` (default, as in the paper): the server runs each returned client model
        on the proxy, so uplink is weights only. ``"predictions"``: clients also send their
        proxy soft predictions (and evaluation-only test predictions), the route
        prediction-sharing methods take; the uplink byte count includes them.

    Client keys honoured: ``arrays`` (global weights in), ``share-weights`` (true),
    ``share-proxy-probs`` / ``share-test-probs`` (with ``teacher_from="predictions"``).
    """

    def __init__(
        self,
        assets: RunAssets,
        *,
        distill_epochs: int = 20,
        distill_batch_size: int = 64,
        distill_lr: float = 1e-4,
        distill_optimizer: str = "adam",
        teacher_from: str = "weights",
        fraction_train: float = 1.0,
        fraction_evaluate: float = 0.0,
        min_train_replies: int = 1,
    ) -> None:
        super().__init__(
            assets,
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_replies=min_train_replies,
        )
        if distill_epochs < 0:
            raise ConfigError(f"strategy.distill_epochs must be >= 0, got {distill_epochs}")
        if teacher_from not in TEACHER_SOURCES:
            raise ConfigError(
                f"strategy.teacher_from must be one of {TEACHER_SOURCES}, got {teacher_from!r}"
            )
        self.distill_epochs = distill_epochs
        self.distill_batch_size = distill_batch_size
        self.distill_lr = distill_lr
        self.distill_optimizer = distill_optimizer
        self.teacher_from = teacher_from
        self.shares_proxy_predictions = teacher_from == "predictions"  # type: ignore[misc]

    def aggregate(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        """FedAvg the weights into the student, then distill it toward the ensemble."""
        super().aggregate(server_round, replies)
        data = self.assets.data
        client_test_probs: np.ndarray | None
        if self.teacher_from == "weights":
            client_proxy_probs = self.predict_with_weights(replies, data.proxy_x)
            client_test_probs = self.predict_with_weights(replies, data.test_x)
        else:
            client_proxy_probs = self.proxy_probs(replies)
            client_test_probs = self.client_test_probs(replies)
        if client_test_probs is not None:
            self.record_ensemble_accuracy(server_round, client_test_probs)
        teacher_probs = mean_targets(client_proxy_probs)
        metrics = self.round_metrics.setdefault(server_round, {})
        if self.distill_epochs > 0:
            report = distill(
                self.assets.student,
                data.proxy_x,
                teacher_probs,
                loss=self.assets.distill_loss,
                epochs=self.distill_epochs,
                batch_size=self.distill_batch_size,
                lr=self.distill_lr,
                optimizer=self.distill_optimizer,
                proxy_y=data.proxy_y,  # None unless data.proxy_labeled: then (1 - alpha) CE
                seed=round_seed(self.assets.setup.seed, server_round, 1),
                device=self.assets.device,
            )
            metrics["distill_loss"] = report.epoch_losses[-1]
        metrics["proxy_agreement"] = agreement(self.assets.student, data.proxy_x, teacher_probs)
        return student_arrays(self.assets.student)
