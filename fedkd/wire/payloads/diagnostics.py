"""Test-set predictions: evaluation-only outputs for per-client and ensemble diagnostics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from flwr.app import Array, RecordDict

from fedkd.privacy.mechanisms import one_hot_votes
from fedkd.wire import keys
from fedkd.wire.payloads.base import (
    ClientRound,
    Expectation,
    Payload,
    as_array,
    check_probability_rows,
    shared_floats,
)
from fedkd.wire.payloads.registry import register

if TYPE_CHECKING:
    from fedkd.wire.secure import SumRule

#: Under secure aggregation: one-hot votes of the client's argmax on the test set.
TEST_VOTES = "test-votes"


@register
class TestPredictions(Payload):
    """``test-probs``: the client model's softmax on the whole server test set, in the
    reply's ``evaluation`` record.

    Simulation telemetry, not part of any method: it measures each client's accuracy and
    the teacher ensemble's on the held-out test set. It is never counted as uplink, and a
    reply whose test predictions are unusable is not rejected: the round's diagnostics are
    left out instead (its value is ``None``). These rows are not protected by any privacy
    mechanism (see docs/PRIVACY.md).
    """

    __test__ = False  # not a pytest class
    model_output: ClassVar[bool] = True
    name: ClassVar[str] = "test-predictions"
    order: ClassVar[int] = 90
    record: ClassVar[str] = keys.EVALUATION
    keys: ClassVar[tuple[str, ...]] = (keys.TEST_PROBS,)
    counted: ClassVar[bool] = False
    required: ClassVar[bool] = False

    def compute(self, client: ClientRound) -> dict[str, Array]:
        test_probs = client.predict("test", client.data.test_x)
        return {keys.TEST_PROBS: as_array(test_probs)}

    def shared_inputs(self, client: ClientRound) -> dict[str, np.ndarray]:
        return {"test": client.data.test_x}

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        values, reason = shared_floats(
            self.arrays(content), keys.TEST_PROBS, (expect.test_rows, expect.num_classes)
        )
        if values is None:
            return reason
        return check_probability_rows(values, keys.TEST_PROBS)

    # ------------------------------------------------------------------ secure aggregation
    summable: ClassVar[bool] = True

    def sum_shapes(self, expect: Expectation) -> dict[str, tuple[int, ...]]:
        shape = (expect.test_rows, expect.num_classes)
        return {keys.TEST_PROBS: shape, TEST_VOTES: shape}

    def summands(
        self, arrays: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, client: ClientRound
    ) -> dict[str, np.ndarray]:
        """The rows in the teacher space (times ``weight``) and one-hot votes of the
        client's argmax: their sum gives the ensemble and the clients' mean accuracy."""
        rows = arrays[keys.TEST_PROBS]
        return {
            keys.TEST_PROBS: rule.evaluation().to_space(rows) * weight,
            TEST_VOTES: one_hot_votes(rows).astype(np.float64),
        }

    def from_sums(
        self, sums: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, count: int
    ) -> SummedTestPredictions:
        rows = rule.evaluation().from_space(sums[keys.TEST_PROBS] / weight)
        return SummedTestPredictions(rows.astype(np.float32), sums[TEST_VOTES], count)

    def sum_bound(self, rule: SumRule, *, value_bound: float, max_examples: float) -> float:
        rows = rule.evaluation().row_bound(value_bound) * rule.weight_bound(max_examples)
        return max(rows, 1.0)  # the votes are 0 or 1

    def decode(self, content: RecordDict, expect: Expectation) -> np.ndarray:
        arrays = self.arrays(content)
        assert arrays is not None
        return arrays[keys.TEST_PROBS]


@dataclass(frozen=True)
class SummedTestPredictions:
    """Test-set predictions under secure aggregation: no client's own, only the sum.

    Attributes
    ----------
    rows : np.ndarray
        ``(N, C)`` rows standing for the clients' mean in the teacher space (the ensemble).
    votes : np.ndarray
        ``(N, C)`` how many clients predicted each class for each test row.
    count : int
        The clients summed.
    """

    rows: np.ndarray
    votes: np.ndarray
    count: int

    def mean_accuracy(self, labels: np.ndarray) -> float:
        """The clients' mean test accuracy: their correct votes over ``count * N``."""
        correct = self.votes[np.arange(len(labels)), labels].sum()
        return float(correct / (self.count * len(labels)))
