"""The round loop: Flower's ``Strategy.start``, plus resume (``first_round``) and a hook
after each round (the ServerApp writes checkpoints there).

It drives a strategy through Flower's contract only (``configure_train``,
``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``, ``summary``) and the
transport's send/receive, so any object with those methods can be run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from fedkd.run.console import phase
from fedkd.run.interrupt import check_stop

logger = logging.getLogger(__name__)


class RoundDriven(Protocol):
    """What :func:`run_rounds` calls: Flower's strategy hooks and a send/receive."""

    def summary(self) -> None: ...

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]: ...

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None: ...

    def send_and_receive(
        self, grid: Grid, messages: Iterable[Message], *, timeout: float, server_round: int
    ) -> list[Message]: ...


def run_rounds(
    strategy: RoundDriven,
    grid: Grid,
    initial_arrays: ArrayRecord,
    *,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord | None,
    evaluate_config: ConfigRecord | None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
    first_round: int,
    on_round_end: Callable[[int, ArrayRecord], Any] | None,
) -> Result:
    """Run rounds ``first_round..num_rounds``.

    ``evaluate_fn(round, arrays)`` runs before the first round (only when starting at
    round 1) and after each round; ``on_round_end(round, arrays)`` runs after it. Train and
    evaluate replies that miss ``timeout`` are left behind; they are never read in a later
    round.
    """
    strategy.summary()  # the method's settings, one log line
    train_config = ConfigRecord() if train_config is None else train_config
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
    result = Result()
    arrays = initial_arrays
    if evaluate_fn is not None and first_round == 1:
        metrics = evaluate_fn(0, arrays)
        if metrics is not None:
            result.evaluate_metrics_serverapp[0] = metrics
    for server_round in range(first_round, num_rounds + 1):
        check_stop(f"before round {server_round}")
        phase(_training_phase(server_round, first_round))
        replies = strategy.send_and_receive(
            grid,
            strategy.configure_train(server_round, arrays, train_config, grid),
            timeout=timeout,
            server_round=server_round,
        )
        phase(f"round {server_round}: aggregating the replies")
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            result.arrays = arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        phase(f"round {server_round}: evaluating")
        evaluate_replies = strategy.send_and_receive(
            grid,
            strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=timeout,
            server_round=server_round,
        )
        evaluate_metrics = strategy.aggregate_evaluate(server_round, evaluate_replies)
        if evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = evaluate_metrics
        if evaluate_fn is not None:
            metrics = evaluate_fn(server_round, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[server_round] = metrics
        if on_round_end is not None:
            on_round_end(server_round, arrays)
    return result


def _training_phase(server_round: int, first_round: int) -> str:
    """What the progress line says while the clients train."""
    if server_round == first_round:  # clients build their data and models on first use
        return f"round {server_round}: clients load data and models, then train"
    return f"round {server_round}: clients training"
