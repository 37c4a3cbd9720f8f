"""Class prototypes: FedProto's per-class mean embeddings (and FedHKD's per-class soft
predictions) of a client's private data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from flwr.app import Array, ConfigRecord, RecordDict

from fedkd.errors import ConfigError
from fedkd.prototypes import class_prototypes, train_with_prototypes
from fedkd.wire import keys
from fedkd.wire.payloads.base import (
    MAX_ABS_VALUE,
    PROBABILITY_SUM_TOLERANCE,
    ClientRound,
    Expectation,
    Payload,
    as_array,
    sent_number,
)
from fedkd.wire.payloads.registry import register
from fedkd.wire.secure import count_weighted_means, count_weighted_summands

if TYPE_CHECKING:
    from fedkd.wire.secure import SumRule


@dataclass(frozen=True)
class PrototypeOptions:
    """FedProto's (and FedHKD's) client regularizer weights.

    Built once by :class:`strategies.fedproto.FedProto` from ``strategy.proto_weight``,
    ``strategy.soft_weight`` and ``strategy.temperature`` (``configs/strategy/fedproto.yaml``
    holds the defaults) and sent with every round config (``proto-weight``,
    ``proto-soft-weight``, ``proto-temperature``); clients read it back with
    :meth:`from_config` and have no defaults of their own. See
    :func:`fedkd.prototypes.train_with_prototypes` for the loss.

    Parameters
    ----------
    proto_weight : float
        ``lambda``, weight of the prototype term (finite, >= 0).
    soft_weight : float
        ``gamma``, weight of the per-class soft-prediction term (finite, >= 0).
    temperature : float
        Softening ``T`` of the soft-prediction term (> 0).
    """

    proto_weight: float
    soft_weight: float
    temperature: float

    def __post_init__(self) -> None:
        for key in ("proto_weight", "soft_weight"):
            value = getattr(self, key)
            if not _is_number(value) or not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"strategy.{key} must be a finite number >= 0, got {value!r}")
        temperature = self.temperature
        if not _is_number(temperature) or not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"strategy.temperature must be a number > 0, got {temperature!r}")
        for key in ("proto_weight", "soft_weight", "temperature"):  # YAML may give ints
            object.__setattr__(self, key, float(getattr(self, key)))

    def to_config(self) -> dict[str, float]:
        """The round-config keys the server sends."""
        return {
            keys.PROTO_WEIGHT: self.proto_weight,
            keys.PROTO_SOFT_WEIGHT: self.soft_weight,
            keys.PROTO_TEMPERATURE: self.temperature,
        }

    @staticmethod
    def from_config(config: ConfigRecord) -> PrototypeOptions:
        """What the server sent; ConfigError naming the key when it sent none."""
        proto_weight, soft_weight, temperature = (
            float(sent_number(config, key))
            for key in (keys.PROTO_WEIGHT, keys.PROTO_SOFT_WEIGHT, keys.PROTO_TEMPERATURE)
        )
        return PrototypeOptions(proto_weight, soft_weight, temperature)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@register
class Prototypes(Payload):
    """``prototypes`` ``(C, D)``, ``prototype-soft`` ``(C, C)``, ``prototype-counts``
    ``(C,)``, computed after local training (they describe the model the client keeps).

    Downlink: the server's count-weighted global prototypes (``targets``); the client then
    trains with the prototype (and soft) regularizer. The server checks shapes (``D`` is
    the client models' common embedding width), finite floats, embeddings within
    :data:`MAX_ABS_VALUE`, integral counts >= 0 summing to the reply's ``num-examples``
    (exactly: no privacy mechanism covers this payload), soft entries in [0, 1] and soft
    rows that are distributions for the classes the client holds.
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
        options = PrototypeOptions.from_config(client.config)
        return train_with_prototypes(
            client.model,
            client.client_data.train_x,
            client.client_data.train_y,
            prototypes=targets[keys.PROTOTYPES].numpy(),
            soft=targets[keys.PROTOTYPE_SOFT].numpy(),
            counts=targets[keys.PROTOTYPE_COUNTS].numpy(),
            settings=client.train_settings,
            proto_weight=options.proto_weight,
            soft_weight=options.soft_weight,
            temperature=options.temperature,
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
        values = {
            keys.PROTOTYPES: as_array(poison.statistic(keys.PROTOTYPES, as_float32(prototypes))),
            keys.PROTOTYPE_SOFT: as_array(poison.statistic(keys.PROTOTYPE_SOFT, as_float32(soft))),
            keys.PROTOTYPE_COUNTS: as_array(counts),
        }
        return poison.reply(self, values, client)

    # ------------------------------------------------------------------ secure aggregation
    summable: ClassVar[bool] = True

    def sum_shapes(self, expect: Expectation) -> dict[str, tuple[int, ...]]:
        classes, width = expect.num_classes, int(expect.options["embedding_width"])
        return {
            keys.PROTOTYPES: (classes, width),
            keys.PROTOTYPE_SOFT: (classes, classes),
            keys.PROTOTYPE_COUNTS: (classes,),
        }

    def summands(
        self, arrays: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, client: ClientRound
    ) -> dict[str, np.ndarray]:
        """``n_c P[c]``, ``n_c S[c]`` and ``n_c``: the global prototypes are their
        count-weighted means (:func:`fedkd.prototypes.aggregate_prototypes`)."""
        return count_weighted_summands(arrays, keys.PROTOTYPE_COUNTS)

    def from_sums(
        self, sums: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, count: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        means = count_weighted_means(sums, keys.PROTOTYPE_COUNTS)
        return tuple(means[name] for name in self.keys)  # type: ignore[return-value]

    def sum_bound(self, rule: SumRule, *, value_bound: float, max_examples: float) -> float:
        return MAX_ABS_VALUE * max_examples  # embeddings times a count

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
        problem = expect.reporting.counts_problem(counts, expect.num_examples)
        if problem is not None:
            return f"prototypes: {problem}"
        held = counts > 0
        row_sums = soft.sum(axis=1, dtype=np.float64)
        if (
            (soft < -1e-6).any()
            or (soft > 1 + PROBABILITY_SUM_TOLERANCE).any()
            or not np.allclose(row_sums[held], 1.0, atol=PROBABILITY_SUM_TOLERANCE)
        ):
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
