"""The part of a run's configuration that every client needs, as one JSON-serializable value."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from fedkd.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class LocalTraining:
    """Hyperparameters of a client's local supervised training.

    Parameters
    ----------
    epochs : int
        Local epochs per round (default 5).
    batch_size : int
        Mini-batch size (default 32).
    lr : float
        Learning rate (default 0.05).
    optimizer : str
        ``"sgd"`` (with ``momentum``) or ``"adam"``.
    momentum : float
        SGD momentum (default 0.9).
    weight_decay : float
        L2 penalty (default 0.0).
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"client.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"client.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"client.lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"client.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )


@dataclass(frozen=True)
class FederationSetup:
    """Everything a ClientApp needs to rebuild its data and model, sent with every message.

    Sending it with the message (rather than through the run config) makes the same
    ClientApp work under ``run_simulation`` (whose run config is empty), ``flwr run`` and
    real SuperNodes. Clients parse it once per process and cache what they build from it.
    """

    dataset: dict[str, Any]
    partition: dict[str, Any]
    num_clients: int
    seed: int
    model: dict[str, Any]
    local: LocalTraining = field(default_factory=LocalTraining)
    proxy_fraction: float = 0.2
    proxy_labeled: bool = False
    test_fraction: float = 0.2
    local_test_fraction: float = 0.2
    device: str = "cpu"
    torch_threads: int = 1

    def data_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`fedkd.data.get_federated_data`."""
        return {
            "dataset": self.dataset,
            "partition": self.partition,
            "num_clients": self.num_clients,
            "seed": self.seed,
            "proxy_fraction": self.proxy_fraction,
            "proxy_labeled": self.proxy_labeled,
            "test_fraction": self.test_fraction,
            "local_test_fraction": self.local_test_fraction,
        }

    def to_json(self) -> str:
        """Serialize to a canonical JSON string (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> FederationSetup:
        """Parse (cached per process: the same string always gives the same object)."""
        return _parse_setup(text)


@lru_cache(maxsize=16)
def _parse_setup(text: str) -> FederationSetup:
    raw = json.loads(text)
    raw["local"] = LocalTraining(**raw["local"])
    return FederationSetup(**raw)
