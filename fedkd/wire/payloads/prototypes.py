"""Class prototypes: FedProto's per-class mean embeddings (and FedHKD's per-class soft
predictions) of a client's private data."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from flwr.app import Array, RecordDict

from fedkd.prototypes import class_prototypes, train_with_prototypes
from fedkd.wire import keys
from fedkd.wire.payloads.base import (
    MAX_ABS_VALUE,
    ClientRound,
    Expectation,
    Payload,
    as_array,
)
from fedkd.wire.payloads.registry import register


@register
class Prototypes(Payload):
    """``prototypes`` ``(C, D)``, ``prototype-soft`` ``(C, C)``, ``prototype-counts``
    ``(C,)``, computed after local training (they describe the model the client keeps).

    Downlink: the server's count-weighted global prototypes (``targets``); the client then
    trains with the prototype (and soft) regularizer. The server checks shapes (``D`` is
    the client models' common embedding width), finite floats, embeddings within
    :data:`MAX_ABS_VALUE`, counts >= 0 summing to at most the reply's ``num-examples``, and
    soft rows that are distributions for the classes the client holds. Counts are exact:
    no privacy mechanism covers this payload.
    """

    name: ClassVar[str] = "prototypes"
    order: ClassVar[int] = 40
    trains_locally: ClassVar[bool] = True
    from_private_records: ClassVar[bool] = True
    keys: ClassVar[tuple[str, ...]] = (
        keys.PROTOTYPES,
        keys.PROTOTYPE_SOFT,
        keys.PROTOTYPE_COUNTS,
    )

    def train(self, client: ClientRound) -> float | None:
        """Local training pulled toward the global prototypes, once they arrived."""
        targets = client.targets
        if targets is None or keys.PROTOTYPES not in targets:
            return None
        local = client.setup.local
        return train_with_prototypes(
            client.model,
            client.client_data.train_x,
            client.client_data.train_y,
            prototypes=targets[keys.PROTOTYPES].numpy(),
            soft=targets[keys.PROTOTYPE_SOFT].numpy(),
            counts=targets[keys.PROTOTYPE_COUNTS].numpy(),
            proto_weight=client.float_option(keys.PROTO_WEIGHT, 1.0),
            soft_weight=client.float_option(keys.PROTO_SOFT_WEIGHT, 0.0),
            temperature=client.float_option(keys.PROTO_TEMPERATURE, 1.0),
            epochs=client.local_epochs,
            batch_size=local.batch_size,
            lr=local.lr,
            optimizer=local.optimizer,
            momentum=local.momentum,
            weight_decay=local.weight_decay,
            seed=client.seed,
            device=client.device,
        )

    def compute(self, client: ClientRound) -> dict[str, Array]:
        prototypes, soft, counts = class_prototypes(
            client.model,
            client.client_data.train_x,
            client.client_data.train_y,
            num_classes=client.data.num_classes,
            device=client.device,
        )
        poison = client.poison
        return {
            keys.PROTOTYPES: as_array(poison.statistic(keys.PROTOTYPES, as_float32(prototypes))),
            keys.PROTOTYPE_SOFT: as_array(poison.statistic(keys.PROTOTYPE_SOFT, as_float32(soft))),
            keys.PROTOTYPE_COUNTS: as_array(counts),
        }

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        arrays = self.arrays(content)
        if arrays is None or len(arrays) < len(self.keys):
            return "missing prototypes"
        prototypes, soft, counts = (arrays[name] for name in self.keys)
        num_classes = expect.num_classes
        expected = (
            (num_classes, int(expect.options.get("embedding_width", 0))),
            (num_classes, num_classes),
            (num_classes,),
        )
        if (prototypes.shape, soft.shape, counts.shape) != expected:
            return "prototypes: wrong shape"
        if any(a.dtype.kind != "f" or not np.isfinite(a).all() for a in (prototypes, soft, counts)):
            return "prototypes: not finite floats"
        if np.abs(prototypes).max(initial=0.0) > MAX_ABS_VALUE:
            return "prototypes: absurd magnitude"
        if (counts < 0).any():
            return "prototypes: negative counts"
        if counts.sum() > expect.num_examples:
            return "prototypes: counts exceed num-examples"
        held = counts > 0
        row_sums = soft.sum(axis=1)
        if (soft < -1e-6).any() or not np.allclose(row_sums[held], 1.0, atol=1e-3):
            return "prototypes: soft rows are not probability vectors"
        return None

    def decode(
        self, content: RecordDict, expect: Expectation
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(prototypes (C, D), soft (C, C), counts (C,))`` as sent."""
        arrays = self.arrays(content)
        assert arrays is not None
        return arrays[keys.PROTOTYPES], arrays[keys.PROTOTYPE_SOFT], arrays[keys.PROTOTYPE_COUNTS]


def as_float32(values: np.ndarray) -> np.ndarray:
    """What a float32 Flower array of ``values`` holds (poisoning acts on the sent values)."""
    return np.ascontiguousarray(values, dtype=np.float32)
