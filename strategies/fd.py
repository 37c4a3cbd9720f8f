"""FD: federated distillation by per-label average logits, no proxy data on the clients."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedkd.errors import ConfigError
from fedkd.wire import keys
from fedkd.wire.payloads import LabelLogits
from fedkd.wire.payloads.label_logits import FDOptions
from strategies.base import ClientReply, FedKDStrategy, RoundState, RunAssets


class FD(FedKDStrategy):
    """Federated Distillation (Jeong, Oh, Kim, Bennis & Kim, 2018, "Communication-Efficient
    On-Device Machine Learning: Federated Distillation and Augmentation under Non-IID
    Private Data", arXiv:1811.11479).

    Round ``t``::

        each client k: train on private data with
            (1 - beta) CE(z, y) + beta T^2 KL(softmax(G_{t-1}[y] / T) || softmax(z / T))
        upload the mean logit vector per true label, L_k[c] (C x C), and counts n_k[c]
        server: G_t[c] = sum_k n_k[c] L_k[c] / sum_k n_k[c]     (global per-label logits)
                the student is distilled on the labeled proxy toward softmax(G_t[y] / T)

    Uplink is ``C x C + C`` numbers per client, independent of the model size. Labels
    nobody has reported yet are trained on their hard label only. Unlike the paper, a
    client's own contribution is not subtracted from ``G`` (a simplification; with many
    clients the difference is small).

    Parameters
    ----------
    beta : float
        Weight of the distillation term in the clients' loss (YAML default 0.5, in [0, 1]).
    temperature : float
        Softening of the global per-label logits (YAML default 1.0, > 0).
    (others)
        See :class:`strategies.base.FedKDStrategy`.

    The server student needs labels on the proxy (``data.proxy_labeled=true``): FD's clients
    share per-label statistics, not predictions on the proxy.

    Client keys honoured: ``keep-model``, ``share-label-logits``, ``targets``
    (``label-logits``, ``label-counts``), ``fd-beta``, ``fd-temperature``.
    """

    payloads = (LabelLogits.name,)
    sends_weights = False
    keeps_client_models = True
    headline_metric: ClassVar[str] = "local_on_global_test_accuracy_mean"  # the paper's metric
    forms_ensemble = True

    def __init__(
        self, assets: RunAssets, *, beta: float, temperature: float, **options: Any
    ) -> None:
        super().__init__(assets, **options)
        #: What clients train with, sent with every round (defaults: fd.yaml).
        self.fd_options = FDOptions(beta=beta, temperature=temperature)
        if assets.data.proxy_y is None:
            raise ConfigError(
                "strategy fd distills its server student from per-label logits, which needs "
                "proxy labels: set data.proxy_labeled=true"
            )

    def train_config(self, server_round: int) -> dict[str, Any]:
        """Base keys plus FD's regularizer settings."""
        return {**super().train_config(server_round), **self.fd_options.to_config()}

    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """Count-weighted global per-label logits; the student learns from them."""
        logits = np.stack([r.values[LabelLogits.name][0] for r in replies])
        counts = np.stack([r.values[LabelLogits.name][1] for r in replies])
        global_logits, total_counts = global_label_logits(logits, counts)
        self.round_targets = ArrayRecord(
            {
                keys.LABEL_LOGITS: Array(global_logits.astype(np.float32)),
                keys.LABEL_COUNTS: Array(total_counts.astype(np.float32)),
            }
        )
        self.targets_round = state.server_round

        data = self.assets.data
        proxy_y = data.proxy_y[state.proxy_indices]  # type: ignore[index]
        temperature = self.fd_options.temperature
        soft = torch.softmax(torch.from_numpy(global_logits) / temperature, dim=1).numpy()
        onehot = np.eye(data.num_classes)
        per_label = np.where((total_counts > 0)[:, None], soft, onehot).astype(np.float32)
        self.distill_student(
            state, data.proxy_x[state.proxy_indices], per_label[proxy_y], labels=proxy_y
        )
        return ArrayRecord()


def global_label_logits(logits: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count-weighted mean of per-label logits over clients.

    ``logits`` is (K, C, C) (client, true label, logit), ``counts`` (K, C). Returns the
    (C, C) global per-label logits (zero rows for labels nobody holds) and the (C,) totals.
    """
    totals = counts.sum(axis=0)
    weighted = (logits * counts[:, :, None]).sum(axis=0)
    return weighted / np.maximum(totals, 1.0)[:, None], totals
