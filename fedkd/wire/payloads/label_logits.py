"""Per-label logits: FD's upload, the mean logit vector per true label and the label counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from flwr.app import Array, ConfigRecord, RecordDict

from fedkd.distill import KDLoss
from fedkd.errors import ConfigError, check_types
from fedkd.train import predict_logits
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
from fedkd.wire.secure import count_weighted_means, count_weighted_summands

if TYPE_CHECKING:
    from fedkd.wire.secure import SumRule


@dataclass(frozen=True)
class FDOptions:
    """FD's client regularizer: ``(1 - beta) CE + beta T^2 KL`` toward ``softmax(G[y] / T)``.

    Built once by :class:`strategies.fd.FD` from ``strategy.beta`` and
    ``strategy.temperature`` (``configs/strategy/fd.yaml`` holds the defaults) and sent with
    every round config (``fd-beta``, ``fd-temperature``); clients read it back with
    :meth:`from_config` and have no defaults of their own.

    Parameters
    ----------
    beta : float
        Weight of the distillation term, in [0, 1].
    temperature : float
        Softening ``T > 0`` of the global per-label logits.
    """

    beta: float
    temperature: float

    def __post_init__(self) -> None:
        check_types(self, prefix="strategy.")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"strategy.beta must be in [0, 1], got {self.beta}")
        if not self.temperature > 0:
            raise ConfigError(f"strategy.temperature must be > 0, got {self.temperature}")

    def to_config(self) -> dict[str, float]:
        """The round-config keys the server sends."""
        return {keys.FD_BETA: self.beta, keys.FD_TEMPERATURE: self.temperature}

    @staticmethod
    def from_config(config: ConfigRecord) -> FDOptions:
        """What the server sent; ConfigError naming the key when it sent none."""
        return FDOptions(
            beta=float(sent_number(config, keys.FD_BETA)),
            temperature=float(sent_number(config, keys.FD_TEMPERATURE)),
        )


@register
class LabelLogits(Payload):
    """``label-logits`` ``(C, C)``: the client model's mean logits over its private
    examples of each true label; ``label-counts`` ``(C,)``: examples per label.

    Downlink: the server's count-weighted global per-label logits (``targets``); the client
    then trains with FD's regularizer, ``(1 - beta) CE + beta T^2 KL`` toward
    ``softmax(G[y] / T)`` (labels nobody reported: the hard label). The server checks
    shapes, float dtypes, finiteness, magnitudes within :data:`MAX_ABS_VALUE`, and integral
    non-negative counts summing to the reply's ``num-examples`` (exactly: no privacy
    mechanism covers this payload, ``privacy=dpsgd`` is refused for FD; under a public
    bound, as :class:`~fedkd.wire.payloads.base.Reporting` says).
    """

    name: ClassVar[str] = "label-logits"
    order: ClassVar[int] = 30
    trains_locally: ClassVar[bool] = True
    from_private_records: ClassVar[bool] = True
    keys: ClassVar[tuple[str, ...]] = (keys.LABEL_LOGITS, keys.LABEL_COUNTS)

    def train(self, client: ClientRound) -> float | None:
        """FD's regularized local training, once global per-label logits arrived."""
        targets = client.targets
        if targets is None or keys.LABEL_LOGITS not in targets:
            return None
        options = FDOptions.from_config(client.config)
        y = client.client_data.train_y
        temperature = options.temperature
        global_logits = targets[keys.LABEL_LOGITS].numpy()
        counts = targets[keys.LABEL_COUNTS].numpy()
        soft = torch.softmax(torch.from_numpy(global_logits) / temperature, dim=1).numpy()
        # Labels nobody reported have no global logits: their target is the hard label.
        onehot = np.eye(client.data.num_classes, dtype=np.float32)
        per_label = np.where((counts > 0)[:, None], soft, onehot).astype(np.float32)
        return client.distill_private(
            per_label[y], KDLoss(temperature=temperature, alpha=options.beta)
        )

    def compute(self, client: ClientRound) -> dict[str, Array]:
        logits, counts = label_logits(client)
        values = {
            keys.LABEL_LOGITS: as_array(client.poison.statistic(keys.LABEL_LOGITS, logits)),
            keys.LABEL_COUNTS: as_array(counts),
        }
        return client.poison.reply(self, values, client)

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        arrays = self.arrays(content)
        if arrays is None or len(arrays) < len(self.keys):
            return "missing label logits"
        logits, counts = arrays[keys.LABEL_LOGITS], arrays[keys.LABEL_COUNTS]
        num_classes = expect.num_classes
        if logits.shape != (num_classes, num_classes) or counts.shape != (num_classes,):
            return "label logits: wrong shape"
        if logits.dtype.kind != "f" or counts.dtype.kind != "f":
            return "label logits: wrong dtype"
        if not (np.isfinite(logits).all() and np.isfinite(counts).all()) or (counts < 0).any():
            return "label logits: not finite or negative counts"
        if np.abs(logits).max(initial=0.0) > MAX_ABS_VALUE:
            return "label logits: absurd magnitude"
        problem = expect.reporting.counts_problem(counts, expect.num_examples)
        if problem is not None:
            return f"label logits: {problem}"
        return None

    # ------------------------------------------------------------------ secure aggregation
    summable: ClassVar[bool] = True

    def sum_shapes(self, expect: Expectation) -> dict[str, tuple[int, ...]]:
        classes = expect.num_classes
        return {keys.LABEL_LOGITS: (classes, classes), keys.LABEL_COUNTS: (classes,)}

    def summands(
        self, arrays: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, client: ClientRound
    ) -> dict[str, np.ndarray]:
        """``n_c L[c]`` and ``n_c``: FD's global logits are their count-weighted mean."""
        return count_weighted_summands(arrays, keys.LABEL_COUNTS)

    def from_sums(
        self, sums: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        means = count_weighted_means(sums, keys.LABEL_COUNTS)
        return means[keys.LABEL_LOGITS], means[keys.LABEL_COUNTS]

    def sum_bound(self, rule: SumRule, *, value_bound: float, max_examples: float) -> float:
        return MAX_ABS_VALUE * max_examples  # logits times a count

    def decode(self, content: RecordDict, expect: Expectation) -> tuple[np.ndarray, np.ndarray]:
        """``(logits (C, C), counts (C,))`` as float64."""
        arrays = self.arrays(content)
        assert arrays is not None
        return (
            arrays[keys.LABEL_LOGITS].astype(np.float64),
            arrays[keys.LABEL_COUNTS].astype(np.float64),
        )


def label_logits(client: ClientRound) -> tuple[np.ndarray, np.ndarray]:
    """Mean logits per true label on private data ``(C, C)`` and the label counts ``(C,)``."""
    num_classes = client.data.num_classes
    logits = predict_logits(client.model, client.client_data.train_x, device=client.device)
    labels = client.client_data.train_y
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    sums = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(sums, labels, logits)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means.astype(np.float32), counts
