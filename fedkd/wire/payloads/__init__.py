"""Payloads: one module per kind of data a client sends (see :mod:`.base` for the contract).

Every module of this package is imported here, and each registers its payload class with
:func:`~fedkd.wire.payloads.registry.register`: adding a payload is adding one module.
:attr:`Payload.order` fixes the order a client computes payloads in and the server
validates them in (poisoning draws from one generator per reply, so the order is part of
the result).
"""

from __future__ import annotations

import importlib
import pkgutil

from fedkd.wire.payloads.base import (
    MAX_ABS_VALUE,
    ClientRound,
    Expectation,
    Payload,
    Poisoner,
)
from fedkd.wire.payloads.control import ControlVariates
from fedkd.wire.payloads.diagnostics import TestPredictions
from fedkd.wire.payloads.discovery import Discovery
from fedkd.wire.payloads.label_logits import LabelLogits
from fedkd.wire.payloads.metrics import ClientMetrics, metric
from fedkd.wire.payloads.prototypes import Prototypes
from fedkd.wire.payloads.proxy import ProxyPredictions
from fedkd.wire.payloads.registry import PAYLOADS, register, resolve
from fedkd.wire.payloads.weights import ModelWeights

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "MAX_ABS_VALUE",
    "PAYLOADS",
    "ClientMetrics",
    "ClientRound",
    "ControlVariates",
    "Discovery",
    "Expectation",
    "LabelLogits",
    "ModelWeights",
    "Payload",
    "Poisoner",
    "Prototypes",
    "ProxyPredictions",
    "TestPredictions",
    "metric",
    "register",
    "resolve",
]
