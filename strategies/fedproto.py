"""FedProto: clients share per-class mean embeddings (prototypes) of their private data."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord

from fedkd.prototypes import aggregate_prototypes
from fedkd.wire import keys
from fedkd.wire.payloads import Prototypes
from fedkd.wire.payloads.prototypes import PrototypeOptions
from strategies.base import ClientReply, FedKDStrategy, RoundState, RunAssets
from strategies.core.checks import common_embedding_width

logger = logging.getLogger(__name__)


class FedProto(FedKDStrategy):
    """FedProto (Tan, Long, Liu, Zhou, Lu, Jiang & Zhang, AAAI 2022, "FedProto: Federated
    Prototype Learning across Heterogeneous Clients", arXiv:2105.00243), optionally with
    FedHKD's per-class soft predictions (Chen, Ding, Chen & Vikalo, 2023, "The Best of Both
    Worlds: Accurate Global and Personalized Models through Federated Learning with
    Data-Free Hyper-Knowledge Distillation", arXiv:2301.09524).

    Round ``t``::

        each client k: train on private data with
            CE(z, y) + lambda ||e - P_{t-1}[y]||^2 / D
                     + gamma T^2 KL(softmax(log S_{t-1}[y] / T) || softmax(z / T))
        upload per class c: mean embedding p_kc (D), mean softmax s_kc (C), count n_kc
        server: P_t[c] = sum_k n_kc p_kc / sum_k n_kc    S_t[c] likewise
                (count-weighted over the clients that hold c), sent back as ``targets``

    ``e`` is the model's ``"embedding"`` feature (the input of its head); the terms apply to
    examples whose class has a global prototype (see :func:`fedkd.prototypes.train_with_prototypes`
    for the exact reductions: mean squared error over ``D`` (``nn.MSELoss``), averaged over
    examples). Round 1 is plain local training. Uplink is ``C x D + C x C + C`` numbers per
    client, independent of the model size; no proxy data and no weights travel. Clients keep
    their own models; there is no server student (``student_accuracy`` is null), so compare
    ``personalized_accuracy_mean`` (each client on its local test split) and
    ``client_accuracy`` (with ``fraction_evaluate > 0``). As in the paper, clients are
    evaluated with their own heads (not by nearest global prototype), and a client's own
    contribution is not subtracted from ``P``.

    Heterogeneous clients (``model=hetero``) work when every architecture has the same
    embedding width ``D`` (e.g. ``mlp`` with ``hidden: [128, 64]`` and ``cnn`` with
    ``hidden: 64``); this is checked when the strategy is built.

    Parameters
    ----------
    proto_weight : float
        ``lambda``, weight of the prototype term (YAML default 1.0, >= 0).
    soft_weight : float
        ``gamma``, weight of the per-class soft-prediction term (YAML default 0.0: pure
        FedProto; > 0 adds FedHKD's hyper-knowledge distillation, >= 0).
    temperature : float
        ``T`` of the soft term (YAML default 1.0, > 0).
    (others)
        See :class:`strategies.base.FedKDStrategy`.

    Client keys honoured: ``keep-model``, ``share-prototypes``, ``targets`` (``prototypes``,
    ``prototype-soft``, ``prototype-counts``), ``proto-weight``, ``proto-soft-weight``,
    ``proto-temperature``.
    """

    payloads: ClassVar[tuple[str, ...]] = (Prototypes.name,)
    sends_weights: ClassVar[bool] = False
    keeps_client_models: ClassVar[bool] = True
    headline_metric: ClassVar[str] = "local_on_global_test_accuracy_mean"  # the paper's metric
    forms_ensemble: ClassVar[bool] = False
    requires_student_architecture: ClassVar[bool] = False
    has_student: ClassVar[bool] = False

    def __init__(
        self,
        assets: RunAssets,
        *,
        proto_weight: float,
        soft_weight: float,
        temperature: float,
        **options: Any,
    ) -> None:
        super().__init__(assets, **options)
        #: What clients train with, sent with every round (defaults: fedproto.yaml).
        self.prototype_options = PrototypeOptions(proto_weight, soft_weight, temperature)
        if proto_weight == 0 and soft_weight == 0:
            logger.warning(
                "strategy.proto_weight and strategy.soft_weight are both 0: clients ignore "
                "the shared prototypes (local training only, with prototype uplink)"
            )
        self.embedding_width = common_embedding_width(
            assets, self.architecture_model, method="fedproto"
        )

    def train_config(self, server_round: int) -> dict[str, Any]:
        """Base keys plus FedProto's sharing flag and regularizer settings."""
        return {**super().train_config(server_round), **self.prototype_options.to_config()}

    def payload_options(self) -> dict[str, Any]:
        """The prototypes' width ``D`` every reply must have."""
        return {"embedding_width": self.embedding_width}

    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """Count-weighted global prototypes and soft predictions, sent back next round."""
        shared = [r.values[Prototypes.name] for r in replies]
        global_prototypes, global_soft, global_counts = aggregate_prototypes(
            np.stack([prototypes for prototypes, _, _ in shared]),
            np.stack([soft for _, soft, _ in shared]),
            np.stack([counts for _, _, counts in shared]),
        )
        self.round_targets = ArrayRecord(
            {
                keys.PROTOTYPES: Array(global_prototypes.astype(np.float32)),
                keys.PROTOTYPE_SOFT: Array(global_soft.astype(np.float32)),
                keys.PROTOTYPE_COUNTS: Array(global_counts.astype(np.float32)),
            }
        )
        self.targets_round = state.server_round
        state.metrics["prototype_classes"] = int((global_counts > 0).sum())
        return ArrayRecord()

    def summary(self) -> None:
        """Log the strategy settings (Flower calls this at start)."""
        super().summary()
        options = self.prototype_options
        logger.info(
            "FedProto: proto_weight=%s soft_weight=%s temperature=%s embedding_width=%s",
            options.proto_weight,
            options.soft_weight,
            options.temperature,
            self.embedding_width,
        )
