"""FedProx baseline: FedAvg whose clients add a proximal term to their local loss."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fedkd.errors import ConfigError
from fedkd.wire import keys
from strategies.core.options import check_types
from strategies.fedavg import FedAvg

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProximalOptions:
    """FedProx's option (``strategy.proximal_mu``).

    Parameters
    ----------
    proximal_mu : float
        Weight ``mu`` of the proximal term, >= 0.
    """

    proximal_mu: float = 0.01

    def __post_init__(self) -> None:
        check_types(self, prefix="strategy.")
        if self.proximal_mu < 0:
            raise ConfigError(f"strategy.proximal_mu must be >= 0, got {self.proximal_mu}")


class FedProx(FedAvg):
    """FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks",
    MLSys).

    Round ``t``: as :class:`~strategies.fedavg.FedAvg`, but each client ``k`` minimizes::

        h_k(w; w_t) = F_k(w) + mu / 2 * ||w - w_t||^2

    from the global weights ``w_t`` (the proximal term keeps local models near the global
    one under heterogeneous data); the server takes the example-weighted mean as FedAvg.
    With ``mu = 0`` it is FedAvg.

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies, on_too_few_replies
        See :class:`strategies.base.FedKDStrategy`.
    proximal_mu : float
        ``mu`` (default 0.01), >= 0.

    Client keys honoured: as FedAvg, plus ``proximal-mu`` (Flower FedProx's key): the
    client adds the term to its supervised local training (:func:`fedkd.train.train_local`).
    Routes that do not train with ``train_local`` (``client.self_distill``, DP-SGD) are
    refused.
    """

    def __init__(self, assets: Any, *, proximal_mu: float = 0.01, **round_options: Any) -> None:
        super().__init__(assets, **round_options)
        self.proximal = ProximalOptions(proximal_mu)
        if assets.setup.local.self_distill is not None:
            raise ConfigError(
                "strategy=fedprox adds its term to plain supervised training: "
                "unset client.self_distill"
            )
        if assets.privacy.name == "dpsgd":
            raise ConfigError("strategy=fedprox does not support privacy=dpsgd")
        if self.proximal.proximal_mu == 0:
            logger.warning("FedProx with proximal_mu=0 is FedAvg")

    @property
    def proximal_mu(self) -> float:
        """``mu`` of the proximal term."""
        return self.proximal.proximal_mu

    def train_config(self, server_round: int) -> dict[str, Any]:
        """FedAvg's round config plus ``proximal-mu``."""
        return {**super().train_config(server_round), keys.PROXIMAL_MU: self.proximal_mu}
