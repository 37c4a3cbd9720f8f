"""Features: FedGKT's upload, a client's per-example embeddings, logits and labels.

The downlink side lives here too: the server's logits on those features (``server-logits``,
one row per private training example, in the client's own order), which the client
distills toward during its next local training.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from flwr.app import Array, RecordDict

from fedkd.distill import KDLoss
from fedkd.models import FedKDModel
from fedkd.train import as_float_tensor
from fedkd.wire import keys
from fedkd.wire.payloads.base import (
    MAX_ABS_VALUE,
    ClientRound,
    Expectation,
    Payload,
    as_array,
    sent_number,
)
from fedkd.wire.payloads.registry import register

# reply (``predictions`` record)
FEATURES = "features"  # (n, D) embeddings of the client's private training examples
FEATURE_LOGITS = "feature-logits"  # (n, C) the client model's logits on them
FEATURE_LABELS = "feature-labels"  # (n,) their labels (int64)
# reply (``evaluation`` record): embeddings of the server test set, evaluation only
TEST_FEATURES = "test-features"
# downlink (``targets``): the server model's logits on the client's features
SERVER_LOGITS = "server-logits"
# round config
GKT_TEMPERATURE = "gkt-temperature"
GKT_ALPHA = "gkt-alpha"


def embed(
    model: FedKDModel, x: np.ndarray, *, device: torch.device, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The model's ``"embedding"`` feature ``(N, D)`` and logits ``(N, C)`` on ``x`` (eval
    mode, no gradients; the model's train/eval mode is restored)."""
    xt = as_float_tensor(x, device)
    embeddings, logits = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch_logits, features = model.forward_features(xt[start : start + batch_size])
                embeddings.append(features["embedding"].flatten(1).float().cpu().numpy())
                logits.append(batch_logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(embeddings), np.concatenate(logits)


@register
class Features(Payload):
    """``features`` ``(n, D)``, ``feature-logits`` ``(n, C)`` and ``feature-labels``
    ``(n,)``: the client model's embedding and logits on each of its ``n`` private training
    examples, with the labels (He et al., NeurIPS 2020, FedGKT).

    Downlink: ``server-logits`` ``(n, C)``, the server model's logits on those features;
    the client then trains with ``alpha * T^2 KL(server_T || client_T) + (1 - alpha) CE``
    (``gkt-temperature``, ``gkt-alpha``); before the first server answer it trains on the
    labels only. The server checks ``1 <= n <= num-examples``, the width ``D`` every client
    architecture shares, float features and logits that are finite and within
    :data:`MAX_ABS_VALUE`, and integer labels in ``[0, C)``.

    Privacy: per-example embeddings with their labels are computed directly on private
    records; no privacy mechanism covers them (``privacy=dpsgd`` is refused).
    """

    name: ClassVar[str] = "features"
    order: ClassVar[int] = 50
    keys: ClassVar[tuple[str, ...]] = (FEATURES, FEATURE_LOGITS, FEATURE_LABELS)
    trains_locally: ClassVar[bool] = True
    from_private_records: ClassVar[bool] = True

    def train(self, client: ClientRound) -> float | None:
        """Local training distilled toward the server's logits, once they arrived."""
        targets = client.targets
        if targets is None or SERVER_LOGITS not in targets:
            return None
        y = client.client_data.train_y
        server_logits = targets[SERVER_LOGITS].numpy()
        if server_logits.shape != (len(y), client.data.num_classes):
            raise ValueError(
                f"{SERVER_LOGITS} have shape {server_logits.shape}, "
                f"expected {(len(y), client.data.num_classes)}"
            )
        return client.distill_private(
            torch.softmax(torch.from_numpy(server_logits).double(), dim=1).float().numpy(),
            KDLoss(
                temperature=float(sent_number(client.config, GKT_TEMPERATURE)),
                alpha=float(sent_number(client.config, GKT_ALPHA)),
            ),
        )

    def compute(self, client: ClientRound) -> dict[str, Array]:
        embeddings, logits = embed(client.model, client.client_data.train_x, device=client.device)
        poison = client.poison
        values = {
            FEATURES: as_array(poison.statistic(FEATURES, embeddings)),
            FEATURE_LOGITS: as_array(poison.statistic(FEATURE_LOGITS, logits)),
            FEATURE_LABELS: Array(np.ascontiguousarray(client.client_data.train_y, np.int64)),
        }
        return poison.reply(self, values, client)

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        arrays = self.arrays(content)
        if arrays is None or len(arrays) < len(self.keys):
            return "missing features"
        features, logits, labels = (arrays[name] for name in self.keys)
        rows = len(labels) if labels.ndim == 1 else 0
        width = int(expect.options.get("feature_width", 0))
        if not 1 <= rows <= expect.num_examples:
            return "features: row count not in [1, num-examples]"
        if features.shape != (rows, width) or logits.shape != (rows, expect.num_classes):
            return "features: wrong shape"
        if features.dtype.kind != "f" or logits.dtype.kind != "f" or labels.dtype.kind not in "iu":
            return "features: wrong dtype"
        if not (np.isfinite(features).all() and np.isfinite(logits).all()):
            return "features: not finite"
        if max(np.abs(features).max(initial=0.0), np.abs(logits).max(initial=0.0)) > MAX_ABS_VALUE:
            return "features: absurd magnitude"
        if labels.min() < 0 or labels.max() >= expect.num_classes:
            return "features: label out of range"
        return None

    def decode(
        self, content: RecordDict, expect: Expectation
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features (n, D) float32, logits (n, C) float32, labels (n,) int64)``."""
        arrays = self.arrays(content)
        assert arrays is not None
        return (
            arrays[FEATURES].astype(np.float32),
            arrays[FEATURE_LOGITS].astype(np.float32),
            arrays[FEATURE_LABELS].astype(np.int64),
        )


@register
class TestFeatures(Payload):
    """``test-features`` ``(N_test, D)``: the client's embedding of the server test set, so
    the server can evaluate its model on top of each client's extractor. Evaluation only:
    never counted as uplink; an unusable one leaves that client out of the evaluation."""

    __test__ = False  # not a pytest class
    model_output: ClassVar[bool] = True
    name: ClassVar[str] = "test-features"
    order: ClassVar[int] = 91
    record: ClassVar[str] = keys.EVALUATION
    keys: ClassVar[tuple[str, ...]] = (TEST_FEATURES,)
    counted: ClassVar[bool] = False
    required: ClassVar[bool] = False

    def compute(self, client: ClientRound) -> dict[str, Array]:
        embeddings, _ = embed(client.model, client.data.test_x, device=client.device)
        return {TEST_FEATURES: as_array(embeddings)}

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        arrays = self.arrays(content)
        if not arrays:
            return "missing test features"
        values = arrays[TEST_FEATURES]
        width = int(expect.options.get("feature_width", 0))
        if values.shape != (expect.test_rows, width) or values.dtype.kind != "f":
            return "test features: wrong shape or dtype"
        if not np.isfinite(values).all():
            return "test features: not finite"
        return None

    def decode(self, content: RecordDict, expect: Expectation) -> np.ndarray:
        arrays = self.arrays(content)
        assert arrays is not None
        return arrays[TEST_FEATURES]
