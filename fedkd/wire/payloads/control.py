"""Control variates: SCAFFOLD's corrected local training and the client's control update."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedkd.errors import ConfigError
from fedkd.train import train_local
from fedkd.wire import keys
from fedkd.wire.payloads.base import (
    MAX_ABS_VALUE,
    ClientRound,
    Expectation,
    Payload,
    shared_floats,
)
from fedkd.wire.payloads.registry import register


@register
class ControlVariates(Payload):
    """``control-delta`` ``(P,)`` in the reply's ``control`` record: the client's control
    update ``Delta c_i = c_i+ - c_i`` (SCAFFOLD, Karimireddy et al., 2020, Option II), with
    ``P`` the model's trainable parameters flattened in ``model.parameters()`` order.

    Downlink: the server control ``c`` as ``server-control`` ``(P,)`` in ``targets`` (a
    client that receives none takes ``c = 0``, in round 1 only). The client's own ``c_i``
    lives in ``context.state`` (``fedkd-control``; zeros at its first participation). Local
    training (:meth:`train`) is ``client.lr`` SGD from the global weights ``x`` whose
    mini-batch gradient is corrected, ``g(y) - c_i + c``, for ``K`` steps; then::

        c_i+ = c_i - c + (x - y) / (K * lr)

    The correction is added to the gradient before the optimizer step, so with
    ``client.momentum > 0`` (or weight decay) the optimizer treats the corrected gradient as
    its gradient. The server checks the length against a model of the client's
    architecture, a float dtype, finiteness and magnitudes within :data:`MAX_ABS_VALUE`.
    Privacy: none covers it (SCAFFOLD refuses every mechanism).
    """

    name: ClassVar[str] = "control"
    order: ClassVar[int] = 45
    record: ClassVar[str] = keys.CONTROL
    trains_locally: ClassVar[bool] = True
    keys: ClassVar[tuple[str, ...]] = (keys.CONTROL_DELTA,)

    # ------------------------------------------------------------------ client side
    def train(self, client: ClientRound) -> float | None:
        """SCAFFOLD's corrected local training; stores ``c_i+`` and this round's delta."""
        state = client_state(client)
        params = trainable(client.model)
        size = sum(p.numel() for p in params)
        server = server_control(client.targets, size, server_round=client.server_round)
        own = (
            state.array_records[keys.STATE_CONTROL][keys.CONTROL].numpy().astype(np.float64)
            if keys.STATE_CONTROL in state.array_records
            else np.zeros(size)
        )
        if own.shape != (size,):
            raise ConfigError(f"{keys.STATE_CONTROL}: shape {own.shape}, expected ({size},)")
        start = flatten(params)
        settings = client.train_settings
        report = train_local(
            client.model,
            client.client_data.train_x,
            client.client_data.train_y,
            settings=settings,
            seed=client.seed,
            device=client.device,
            gradient_correction=unflatten(server - own, params),
        )
        drift = start - flatten(params)  # x - y
        updated = own - server + drift / (report.steps * settings.lr)
        state[keys.STATE_CONTROL] = ArrayRecord({keys.CONTROL: Array(updated)})
        state[keys.STATE_CONTROL_DELTA] = ArrayRecord(
            {keys.CONTROL_DELTA: Array(np.ascontiguousarray(updated - own))}
        )
        return report.loss

    def compute(self, client: ClientRound) -> dict[str, Any]:
        """This round's ``Delta c_i`` as float32 (zeros when the client did not train)."""
        state = client_state(client)
        size = sum(p.numel() for p in trainable(client.model))
        if keys.STATE_CONTROL_DELTA in state.array_records:
            delta = state.array_records[keys.STATE_CONTROL_DELTA][keys.CONTROL_DELTA].numpy()
            del state[keys.STATE_CONTROL_DELTA]
        else:
            delta = np.zeros(size)
        delta = client.poison.statistic(keys.CONTROL_DELTA, delta.astype(np.float32))
        values = {keys.CONTROL_DELTA: Array(np.ascontiguousarray(delta, dtype=np.float32))}
        return client.poison.reply(self, values, client)

    # ------------------------------------------------------------------ server side
    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        assert expect.reference is not None, "control variates need a reference model"
        size = sum(p.numel() for p in trainable(expect.reference))
        values, problem = shared_floats(self.arrays(content), keys.CONTROL_DELTA, (size,))
        if problem is not None:
            return f"control: {problem}"
        assert values is not None
        if np.abs(values).max(initial=0.0) > MAX_ABS_VALUE:
            return "control: absurd magnitude"
        return None

    def decode(self, content: RecordDict, expect: Expectation) -> np.ndarray:
        """``Delta c_i`` ``(P,)`` as float64."""
        arrays = self.arrays(content)
        assert arrays is not None
        return arrays[keys.CONTROL_DELTA].astype(np.float64)


def client_state(client: ClientRound) -> RecordDict:
    """The client's ``context.state`` (the ClientApp always passes it)."""
    if client.state is None:
        raise ConfigError("SCAFFOLD keeps c_i in the client's context.state, which is missing")
    return client.state


def server_control(targets: ArrayRecord | None, size: int, *, server_round: int) -> np.ndarray:
    """The server control ``c`` the round sent, checked: ``(size,)`` finite floats. Absent:
    zeros in round 1 (nothing to correct yet), else a ConfigError."""
    if targets is None or keys.SERVER_CONTROL not in targets:
        if server_round <= 1:
            return np.zeros(size)
        raise ConfigError(
            f"round {server_round}: the server sent no {keys.SERVER_CONTROL!r} "
            "(SCAFFOLD's clients need the server control after round 1)"
        )
    values, problem = shared_floats(
        {keys.SERVER_CONTROL: targets[keys.SERVER_CONTROL].numpy()}, keys.SERVER_CONTROL, (size,)
    )
    if problem is not None:
        raise ConfigError(f"server sent an unusable control: {problem}")
    assert values is not None
    return values.astype(np.float64)


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters a control variate covers, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def flatten(params: list[torch.nn.Parameter]) -> np.ndarray:
    """The parameters' values as one float64 vector."""
    return (
        np.concatenate([p.detach().cpu().numpy().astype(np.float64).ravel() for p in params])
        if params
        else np.zeros(0)
    )


def unflatten(vector: np.ndarray, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """``vector`` cut into tensors shaped (and typed) like ``params``."""
    tensors, start = [], 0
    for p in params:
        chunk = vector[start : start + p.numel()].reshape(tuple(p.shape))
        tensors.append(torch.from_numpy(np.ascontiguousarray(chunk)).to(p.dtype))
        start += p.numel()
    return tensors
