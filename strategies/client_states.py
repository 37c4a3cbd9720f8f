"""Client state across rounds and checkpoints (a mixin of :class:`strategies.base.FedKDStrategy`):
the method's own state between rounds, and the clients' ``context.state`` exported into a
checkpoint and imported on resume (:mod:`strategies.core.transport`)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar

from flwr.serverapp import Grid

from fedkd.errors import ConfigError
from strategies.core import transport

if TYPE_CHECKING:
    from strategies.base import FedKDStrategy


class ClientStates:
    """Checkpointed state of the method and of its clients."""

    checkpoint_attributes: ClassVar[tuple[str, ...]]

    def checkpoint_state(self) -> dict[str, Any]:
        """The method's state between rounds (picklable), for :meth:`load_checkpoint_state`."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.checkpoint_attributes}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` saved."""
        missing = sorted(set(self.checkpoint_attributes) - set(state))
        if missing:
            raise ConfigError(
                f"checkpoint lacks strategy state {missing} for {type(self).__name__}"
            )
        for name in self.checkpoint_attributes:
            setattr(self, name, state[name])

    def keeps_client_state(self: FedKDStrategy) -> bool:  # type: ignore[misc]
        """Whether clients hold state between rounds that a checkpoint must save: their own
        model (``keep-model``) or their DP-SGD accountant history (``privacy=dpsgd``)."""
        return self.keeps_client_models or (
            self.privacy is not None and self.privacy.spec.name == "dpsgd"
        )

    def export_client_states(  # type: ignore[misc]
        self: FedKDStrategy, grid: Grid, *, timeout: float | None = None
    ) -> dict[int, dict[str, Any]]:
        """Every discovered client's ``context.state`` records, by partition id."""
        return transport.export_client_states(
            grid,
            self.node_of_partition,
            setup_json=self._setup_json,
            timeout=timeout,
            observe=lambda r: self.ledger.record("state-export", r.content, simulation_only=True),
        )

    def import_client_states(  # type: ignore[misc]
        self: FedKDStrategy,
        grid: Grid,
        states: dict[int, dict[str, Any]],
        *,
        timeout: float | None = None,
    ) -> None:
        """Give each client back the ``context.state`` a checkpoint saved for its partition."""
        transport.import_client_states(
            grid, self.node_of_partition, states, setup_json=self._setup_json, timeout=timeout
        )
