"""Model weights: a client's trained parameters (FedAvg, FedDF)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict

from fedkd.wire import keys
from fedkd.wire.arrays import array_values
from fedkd.wire.payloads.base import MAX_ABS_VALUE, ClientRound, Expectation, Payload, to_record
from fedkd.wire.payloads.registry import register


@register
class ModelWeights(Payload):
    """The client's whole ``state_dict`` in the reply's ``arrays`` record.

    Poisoning (``attack``) acts on the update relative to the round's starting weights.
    The server checks parameter names, shapes and dtypes against a model of the client's
    architecture, and that every float is finite and within :data:`MAX_ABS_VALUE`.
    Privacy: only ``privacy=dpsgd`` covers weights (the model is trained with DP-SGD).
    """

    model_output: ClassVar[bool] = True
    name: ClassVar[str] = "weights"
    order: ClassVar[int] = 10
    record: ClassVar[str] = keys.ARRAYS

    def compute(self, client: ClientRound) -> dict[str, Any]:
        """The trained weights (poisoned by a malicious client)."""
        record = ArrayRecord({k: v.detach().cpu() for k, v in client.model.state_dict().items()})
        if not client.poison.active:
            return client.poison.reply(self, dict(record.items()), client)
        state = {name: array_values(array) for name, array in record.items()}
        return to_record(client.poison.weights(state))

    def owned(self, record: ArrayRecord) -> list[str]:
        """Every entry: the record is the whole state dict."""
        return list(record.keys())

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        if keys.ARRAYS not in content.array_records:
            return "missing weights"
        assert expect.reference is not None, "weights need a reference model"
        return check_weights(content.array_records[keys.ARRAYS], expect.reference)

    def decode(self, content: RecordDict, expect: Expectation) -> ArrayRecord:
        """The weights as the ArrayRecord the client sent."""
        return content.array_records[keys.ARRAYS]

    def uplink_bytes(self, content: RecordDict) -> int:
        record = content.array_records.get(self.record)
        return 0 if record is None else record.count_bytes()


def check_weights(record: ArrayRecord, reference: torch.nn.Module) -> str | None:
    """Why ``record`` cannot be loaded into ``reference`` safely, or None."""
    expected = reference.state_dict()
    if set(record.keys()) != set(expected.keys()):
        return "weights: unexpected parameter names"
    for name, array in record.items():
        if tuple(array.shape) != tuple(expected[name].shape):
            return f"weights: wrong shape for {name}"
        values = array_values(array)
        if values.dtype != torch.empty(0, dtype=expected[name].dtype).numpy().dtype:
            return f"weights: wrong dtype for {name}"
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return "weights: non-finite values"
        if values.dtype.kind == "f" and np.abs(values).max(initial=0.0) > MAX_ABS_VALUE:
            return "weights: absurd magnitude"
    return None
