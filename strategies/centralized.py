"""Centralized baseline: the student trained on the union of all clients' data (the ceiling)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedkd.errors import ConfigError
from fedkd.train import train_local
from strategies.base import (
    ClientReply,
    FedKDStrategy,
    RoundState,
    RunAssets,
    round_seed,
    student_arrays,
)


class Centralized(FedKDStrategy):
    """Centralized training: the ceiling of every comparison.

    The server trains the student on the pooled training data of all clients (exactly the
    examples they would train on, without their local test splits), ``client.epochs``
    epochs per round with the clients' optimizer settings. No message is sent, so byte
    counts are 0; privacy is of course not preserved. ``num_rounds`` rounds give the same
    number of passes over the data as the federated methods' local epochs.

    With ``train_on="proxy"`` the student instead learns from the labeled public proxy
    alone (``data.proxy_labeled=true``): what the public data gives without any federation,
    the reference for methods whose server student sees proxy labels (FD).

    Parameters
    ----------
    assets
        See :class:`strategies.base.FedKDStrategy` (the sampling options do not apply).
    train_on : str
        ``"pooled"`` (YAML default): all clients' training data; ``"proxy"``: the labeled
        proxy.
    """

    sends_weights = False
    has_clients = False

    def __init__(self, assets: RunAssets, *, train_on: str, **options: Any) -> None:
        super().__init__(assets, **options)
        data = assets.data
        if train_on == "pooled":
            pooled = [data.client_data(p) for p in range(data.num_clients)]
            self.pooled_x = np.concatenate([c.train_x for c in pooled])
            self.pooled_y = np.concatenate([c.train_y for c in pooled])
        elif train_on == "proxy":
            if data.proxy_y is None:
                raise ConfigError(
                    "strategy.train_on=proxy trains on the proxy's labels: "
                    "set data.proxy_labeled=true"
                )
            self.pooled_x, self.pooled_y = data.proxy_x, data.proxy_y
        else:
            raise ConfigError(f"strategy.train_on must be 'pooled' or 'proxy', got {train_on!r}")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No clients take part."""
        self.round_metrics.setdefault(server_round, {})["clients_sampled"] = 0
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Train the student on the pooled data for one round's worth of epochs."""
        report = train_local(
            self.assets.student,
            self.pooled_x,
            self.pooled_y,
            settings=self.assets.setup.local,
            seed=round_seed(self.assets.setup.seed, server_round, 2),
            device=self.assets.device,
        )
        self.round_metrics[server_round].update(
            {
                "clients_ok": 0,
                "clients_failed": 0,
                "uplink_bytes": 0,
                "downlink_bytes": 0,
                "train_loss": report.loss,
            }
        )
        return student_arrays(self.assets.student), MetricRecord({"train-loss": report.loss})

    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """Unused: :meth:`aggregate_train` trains directly."""
        return student_arrays(self.assets.student)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No clients to evaluate on."""
        return []
