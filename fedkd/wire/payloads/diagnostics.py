"""Test-set predictions: evaluation-only outputs for per-client and ensemble diagnostics."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from flwr.app import Array, RecordDict

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

    def decode(self, content: RecordDict, expect: Expectation) -> np.ndarray:
        arrays = self.arrays(content)
        assert arrays is not None
        return arrays[keys.TEST_PROBS]
