"""Shared test helpers: task identity for building Messages, an in-process fake grid."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from flwr.app import Error, Message
from flwr.supercore.task_identity import TaskIdentity

from simulations.engine import InlineGrid

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every ``ray`` test is also ``slow``: ``pytest -m "not slow"`` never starts Ray.

    Two tiers: ``pytest`` runs everything; ``pytest -m "not slow"`` (about 2 minutes on 2
    cores) leaves out what is marked ``slow`` in the test files (``flwr run``, real Flower
    processes, subprocess runs, sweeps, tests over ~2 s) and, here, every ``ray`` test.
    """
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Let tests build server-side Messages outside a Flower runtime.

    Flower's own runtimes set this process-wide identity (run id 1, the SuperLink's node
    id 0, task 1) before a ServerApp builds Messages; tests do the same and undo it.
    """
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class InProcessGrid(InlineGrid):
    """fedkd's InlineGrid plus test hooks: injected client failures and a log of sent messages."""

    def __init__(
        self,
        client_app: Any,
        num_nodes: int,
        *,
        seed: int = 123,
        fail_partitions: Iterable[int] = (),
    ) -> None:
        super().__init__(client_app, num_nodes, seed=seed)
        self.fail_partitions = set(fail_partitions)
        self.sent: list[Message] = []

    def deliver(self, message: Message) -> Message:
        self.sent.append(message)
        pid = self.contexts[message.metadata.dst_node_id].node_config["partition-id"]
        if pid in self.fail_partitions and message.metadata.message_type == "train":
            reason = f"Traceback ...\nRuntimeError: injected failure on partition {pid}"
            return Message(Error(code=2, reason=reason), reply_to=message)
        return super().deliver(message)


@pytest.fixture
def in_process_grid() -> type[InProcessGrid]:
    return InProcessGrid


def run_in_process(overrides: list[str], run_dir: Any) -> dict[str, Any]:
    """Compose the real config and run the real ServerApp path on an InProcessGrid (no Ray)."""
    from fedkd.apps.client import app as client_app
    from fedkd.apps.server import prepare_run, run_federation
    from fedkd.config import compose_config

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        cfg = compose_config([*overrides, "progress=false"])
        plan = prepare_run(cfg)
        grid = InProcessGrid(client_app, cfg["num_clients"])
        return run_federation(grid, plan, run_dir, show_progress=False)  # type: ignore[arg-type]
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def in_process_run() -> Any:
    return run_in_process
