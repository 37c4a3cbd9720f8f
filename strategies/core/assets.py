"""The server-side objects a strategy works with, built once by the ServerApp."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedkd.data import FederatedData
from fedkd.models import FedKDModel
from fedkd.privacy import PrivacySpec
from fedkd.reliability.attacks import AttackSpec
from fedkd.reliability.faults import FaultSpec
from fedkd.setup import FederationSetup
from fedkd.wire.secure import SecAggSpec

if TYPE_CHECKING:
    from fedkd.distill.augment import Augmentation


@dataclass
class RunAssets:
    """Server-side objects a strategy works with, built once by the ServerApp.

    Attributes
    ----------
    setup : FederationSetup
        The settings every client receives (dataset, partition, client model, training).
    data : FederatedData
        The federated view of the dataset; the server uses its proxy and test set only.
    student : FedKDModel
        The global student, trained in place by the strategy.
    distill_loss : nn.Module
        The loss used for distillation steps (``distill`` config group).
    device : torch.device
        Where server-side training and inference run.
    aggregation : dict
        The teacher-target rule (``aggregation`` config group): ``name`` and options.
    student_config : dict
        The ``student`` config group (to tell which client architecture, if any, it is).
    distill_config : dict
        The resolved ``distill`` group (name and options) the loss was built from; clients
        build the same loss for their digest steps.
    augmentation : Augmentation, optional
        Transfer-data augmentation of proxy batches (``augment`` group); ``None``: off.
    privacy : PrivacySpec
        The ``privacy`` group (mechanism, accounting and audit options).
    faults : FaultSpec
        Fault injection (``faults`` block): crashing, straggling and killed clients.
    attack : AttackSpec
        Poisoning simulation (``attack`` block): which clients are malicious and how.
    secagg : SecAggSpec
        Secure aggregation of shared predictions (``secagg`` block).
    client_test_predictions : bool
        Clients send their predictions on the server test set
        (``diagnostics.client_test_predictions``, resolved by
        :func:`fedkd.apps.plan.client_test_predictions`).
    round_timeout : float
        Seconds the server waits for a round's replies (stragglers sleep past it).
    """

    setup: FederationSetup
    data: FederatedData
    student: FedKDModel
    distill_loss: nn.Module
    device: torch.device
    aggregation: dict[str, Any] = field(default_factory=lambda: {"name": "mean"})
    student_config: dict[str, Any] = field(default_factory=dict)
    distill_config: dict[str, Any] = field(default_factory=lambda: {"name": "kd"})
    augmentation: Augmentation | None = None
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    attack: AttackSpec = field(default_factory=AttackSpec)
    round_timeout: float = 3600.0
    client_test_predictions: bool = True
    secagg: SecAggSpec = field(default_factory=SecAggSpec)


def rule_options(spec: dict[str, Any]) -> dict[str, Any]:
    """A config group's options: every key but ``name`` and private ``_`` keys."""
    return {k: v for k, v in spec.items() if k != "name" and not k.startswith("_")}
