"""SCAFFOLD baseline: FedAvg whose clients correct their local gradients with control variates."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedkd.errors import ConfigError
from fedkd.wire import keys
from fedkd.wire.payloads import ControlVariates
from fedkd.wire.payloads.control import trainable
from strategies.base import ClientReply, RoundState
from strategies.fedavg import FedAvg, average_replies

logger = logging.getLogger(__name__)


class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for
    Federated Learning", ICML; Algorithm 1, Option II, global learning rate 1).

    Round ``t``, with ``x`` the global weights, ``c`` the server control (both zeros at
    start for ``c``), ``N = num_clients`` and ``S`` the clients that answered validly::

        each client i in S (c_i = 0 at its first participation), from y = x:
            K steps of  y <- y - lr (g_i(y) - c_i + c)          (lr = client.lr)
            c_i+ = c_i - c + (x - y) / (K lr);  send y and Delta c_i = c_i+ - c_i
        x <- sum_i n_i y_i / sum_i n_i                            (FedAvg's mean)
        c <- c + (1 / N) sum_{i in S} Delta c_i                   (= |S|/N mean Delta c_i)

    The mean of the weights is :class:`~strategies.fedavg.FedAvg`'s (example-weighted),
    where the paper's is uniform; with ``c = c_i = 0`` a round is FedAvg's. The controls
    cover the trainable parameters (buffers are averaged as weights); ``c`` is kept in
    float64, sent as float32, and saved in checkpoints, and each client's ``c_i`` in its
    ``context.state`` (exported with checkpoints). With ``client.momentum > 0`` the
    correction is still added to the gradient before the optimizer step.

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies, on_too_few_replies
        See :class:`strategies.base.FedKDStrategy`.

    Client keys honoured: as FedAvg, plus ``server-control`` in ``targets`` (in) and the
    ``control`` payload (:class:`~fedkd.wire.payloads.control.ControlVariates`, out). Refused
    before any client runs: ``privacy`` other than ``none``, ``client.optimizer`` other than
    ``sgd``, ``client.self_distill`` and ``client.born_again`` (the correction is for plain
    supervised training); mixed architectures are refused as for FedAvg.
    """

    checkpoint_attributes: ClassVar[tuple[str, ...]] = (
        *FedAvg.checkpoint_attributes,
        "server_control",
    )

    def __init__(self, assets: Any, **round_options: Any) -> None:
        super().__init__(assets, **round_options)
        check_scaffold_settings(assets)
        #: The server control ``c`` over the student's trainable parameters, flat.
        self.server_control = np.zeros(sum(p.numel() for p in trainable(assets.student)))
        #: ``c`` as sent this round (one record for every client).
        self.control_record = ArrayRecord()

    def requested_payloads(self) -> tuple[str, ...]:
        """FedAvg's weights plus the control update."""
        return (*self.payloads, ControlVariates.name)

    def keeps_client_state(self) -> bool:
        """Clients keep ``c_i`` between rounds: checkpoints must save it."""
        return True

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's messages, each with the server control in ``targets``."""
        self.control_record = ArrayRecord(
            {keys.SERVER_CONTROL: Array(self.server_control.astype(np.float32))}
        )
        return super().configure_train(server_round, arrays, config, grid)

    def targets_for(self, partition_id: int) -> ArrayRecord | None:
        """The server control ``c`` (the same record for every client)."""
        return self.control_record

    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """FedAvg's mean of the weights, then ``c += sum of Delta c_i / num_clients``."""
        record = average_replies(replies)
        self.assets.student.load_state_dict(record.to_torch_state_dict(), strict=True)
        deltas = np.stack([r.values[ControlVariates.name] for r in replies])
        self.server_control = self.server_control + deltas.sum(axis=0) / float(
            self.assets.setup.num_clients
        )
        return record


def check_scaffold_settings(assets: Any) -> None:
    """Refuse settings SCAFFOLD's correction does not apply to (ConfigError naming the key)."""
    if assets.privacy.name != "none":
        raise ConfigError(
            f"strategy=scaffold does not support privacy={assets.privacy.name}: the control "
            "variates are sent unprotected and DP-SGD changes the gradient (use privacy=none)"
        )
    local = assets.setup.local
    if local.self_distill is not None or local.born_again is not None:
        raise ConfigError(
            "strategy=scaffold corrects plain supervised training: unset "
            "client.self_distill and client.born_again"
        )
    if local.optimizer != "sgd":
        raise ConfigError(
            f"strategy=scaffold trains clients with SGD (its control update divides by "
            f"K * lr): client.optimizer must be sgd, got {local.optimizer!r}"
        )
    if len(assets.setup.architectures) != 1:
        raise ConfigError("strategy=scaffold needs one architecture for every client")
    if local.momentum > 0:
        logger.warning(
            "SCAFFOLD with client.momentum=%g: the correction is added to the gradient "
            "before the momentum step (the paper uses plain SGD)",
            local.momentum,
        )
