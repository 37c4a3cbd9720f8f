"""FedGKT: clients send features and logits; a larger server model learns from them."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedkd.distill import KDLoss
from fedkd.errors import ConfigError
from fedkd.metrics import binary_scores
from fedkd.models import FedKDModel, model_from_config
from fedkd.train import predict_logits
from fedkd.wire.payloads.features import (
    GKT_ALPHA,
    GKT_TEMPERATURE,
    SERVER_LOGITS,
    Features,
    TestFeatures,
)
from strategies.base import ClientReply, FedKDStrategy, RoundState, RunAssets
from strategies.core.checks import common_embedding_width
from strategies.core.distillation import ServerDistillation

logger = logging.getLogger(__name__)


class FedGKT(FedKDStrategy):
    """Group Knowledge Transfer (He, Annavaram & Avestimehr, NeurIPS 2020, "Group Knowledge
    Transfer: Federated Learning of Large CNNs at the Edge", arXiv:2007.14513).

    Round ``t``, clients with small models ``f_k = h_k . e_k`` (extractor ``e_k``, head
    ``h_k``) and a larger server model ``g`` on the extracted features::

        each client k: train on private data (x, y) with
            alpha T^2 KL(softmax(z_s / T) || softmax(f_k(x) / T)) + (1 - alpha) CE(f_k(x), y)
            (z_s: the server's logits on x from round t-1; round 1: CE only)
        upload H_k = e_k(x), Z_k = f_k(x) and y for every private training example
        server: train g on (H, y) with
            alpha T^2 KL(softmax(Z / T) || softmax(g(H) / T)) + (1 - alpha) CE(g(H), y)
            send each client z_s = g(H_k), its own rows

    The server model ``g`` is an MLP on the embedding (``server_hidden``), trained for
    ``distill_epochs`` epochs per round with ``distill_lr``/``distill_batch_size``/
    ``distill_optimizer`` (the ``distill`` loss group is not used: both sides use the KD
    loss above). No weights and no proxy data travel; clients keep their models.

    The global model is ``g`` on top of a client's extractor, so ``student_accuracy`` is
    the mean over the round's clients of ``g(e_k(x))`` on the server test set, from the
    clients' embeddings of that set (``test-features``, evaluation only, not uplink);
    ``combined_accuracy_min``/``_max`` give the spread; on a binary task
    ``student_balanced_accuracy`` and ``student_auc`` are such means too. Uplink per client
    and round is ``n_k (D + C)`` floats plus ``n_k`` labels: it grows with the client's
    data, unlike prediction sharing. Per-example features and labels leave the client
    unprotected: no ``privacy`` mechanism applies (refused).

    Heterogeneous clients work when every architecture has the same embedding width.

    Parameters
    ----------
    temperature : float
        ``T`` of both KD terms (default 3.0, the paper's; > 0).
    alpha : float
        Weight of the KD term against cross-entropy, on clients and server (default 0.5:
        equal weights; in [0, 1]).
    server_hidden : list of int
        Hidden widths of the server MLP (default ``[256, 256]``).
    (others)
        See :class:`strategies.base.FedKDStrategy`.

    Client keys honoured: ``keep-model``, ``payloads`` (``features``, ``test-features``),
    ``targets`` (``server-logits``), ``gkt-temperature``, ``gkt-alpha``.
    """

    payloads: ClassVar[tuple[str, ...]] = (Features.name, TestFeatures.name)
    sends_weights: ClassVar[bool] = False
    keeps_client_models: ClassVar[bool] = True
    has_student: ClassVar[bool] = False
    checkpoint_attributes = (*FedKDStrategy.checkpoint_attributes, "server_state", "server_logits")

    def __init__(
        self,
        assets: RunAssets,
        *,
        temperature: float = 3.0,
        alpha: float = 0.5,
        server_hidden: list[int] | tuple[int, ...] = (256, 256),
        **options: Any,
    ) -> None:
        super().__init__(assets, **options)
        if not temperature > 0:
            raise ConfigError(f"strategy.temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"strategy.alpha must be in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.feature_width = common_embedding_width(
            assets, self.architecture_model, method="fedgkt"
        )
        data = assets.data
        try:
            self.server_model: FedKDModel = model_from_config(
                {"name": "mlp", "hidden": list(server_hidden)},
                input_shape=(self.feature_width,),
                num_classes=data.num_classes,
                seed=assets.setup.seed,
            ).to(assets.device)
        except ConfigError as exc:
            raise ConfigError(f"strategy.server_hidden: {exc}") from exc
        self.server_training = ServerDistillation(
            self.distillation.options,
            loss=KDLoss(temperature=self.temperature, alpha=self.alpha),
            device=assets.device,
            seed=assets.setup.seed,
        )
        #: Each partition's latest server logits (sent back until it trains again).
        self.server_logits: dict[int, np.ndarray] = {}
        #: Per round: the server model on each client's test-set embedding, mean over clients.
        self.combined_accuracy: dict[int, float] = {}

    @property
    def server_state(self) -> dict[str, torch.Tensor]:
        """The server model's weights (checkpointed)."""
        return {k: v.detach().cpu() for k, v in self.server_model.state_dict().items()}

    @server_state.setter
    def server_state(self, state: dict[str, torch.Tensor]) -> None:
        self.server_model.load_state_dict(state, strict=True)

    def payload_options(self) -> dict[str, Any]:
        """The embedding width every reply's features must have."""
        return {"feature_width": self.feature_width}

    def train_config(self, server_round: int) -> dict[str, Any]:
        """Base keys plus the KD settings clients train with."""
        return {
            **super().train_config(server_round),
            GKT_TEMPERATURE: self.temperature,
            GKT_ALPHA: self.alpha,
        }

    def targets_for(self, partition_id: int) -> ArrayRecord | None:
        """The server's logits on this client's features (None before its first round)."""
        logits = self.server_logits.get(partition_id)
        if logits is None:
            return None
        return ArrayRecord({SERVER_LOGITS: Array(np.ascontiguousarray(logits, np.float32))})

    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """Train the server model on every reply's features toward the clients' logits and
        labels, then keep its logits on each client's features for that client."""
        shared = [r.values[Features.name] for r in replies]
        features = np.concatenate([f for f, _, _ in shared])
        teacher = torch.softmax(torch.from_numpy(np.concatenate([z for _, z, _ in shared])), dim=1)
        labels = np.concatenate([y for _, _, y in shared])
        self.server_training.fit(
            self.server_model,
            state.server_round,
            features,
            teacher.numpy(),
            labels=labels,
        )
        for reply, (client_features, _, _) in zip(replies, shared, strict=True):
            self.server_logits[reply.partition_id] = predict_logits(
                self.server_model, client_features, device=self.assets.device
            )
        self._record_combined_accuracy(state, replies)
        return ArrayRecord()

    def global_accuracy(self, server_round: int) -> float | None:
        """The combined model's test accuracy this round (``student_accuracy``)."""
        return self.combined_accuracy.get(server_round)

    def _record_combined_accuracy(self, state: RoundState, replies: list[ClientReply]) -> None:
        """The server model on each client's test-set embedding: the mean for
        :meth:`global_accuracy`, the spread in the round's metrics, and on a binary task the
        mean balanced accuracy and ROC-AUC (``student_balanced_accuracy``, ``student_auc``)."""
        test_y = self.assets.data.test_y
        logits = [
            predict_logits(self.server_model, test_features, device=self.assets.device)
            for test_features in (r.values.get(TestFeatures.name) for r in replies)
            if test_features is not None
        ]
        if not logits:
            return
        accuracies = [float((z.argmax(axis=1) == test_y).mean()) for z in logits]
        self.combined_accuracy[state.server_round] = float(np.mean(accuracies))
        state.metrics["combined_accuracy_min"] = min(accuracies)
        state.metrics["combined_accuracy_max"] = max(accuracies)
        if self.assets.data.num_classes == 2:
            scores = [
                binary_scores(test_y, torch.softmax(torch.from_numpy(z).float(), dim=1).numpy())
                for z in logits
            ]
            aucs = [s["auc"] for s in scores if s["auc"] is not None]
            state.metrics["student_balanced_accuracy"] = float(
                np.mean([s["balanced_accuracy"] for s in scores])
            )
            state.metrics["student_auc"] = float(np.mean(aucs)) if aucs else None

    def summary(self) -> None:
        """Log the strategy settings (Flower calls this at start)."""
        super().summary()
        logger.info(
            "FedGKT: temperature=%s alpha=%s feature_width=%s server model %s",
            self.temperature,
            self.alpha,
            self.feature_width,
            self.server_model.spec,
        )
