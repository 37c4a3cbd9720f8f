"""Shared test helpers: task identity for building Messages, an in-process fake grid."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


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


class InProcessGrid:
    """Delivers Messages to a ClientApp in this process, one Context per simulated node.

    Node ids are random (as in Flower) so tests can check that fedkd never relies on them.
    A ClientApp exception becomes an Error reply, as Flower's engine does.
    """

    def __init__(
        self,
        client_app: Any,
        num_nodes: int,
        *,
        seed: int = 123,
        fail_partitions: Iterable[int] = (),
    ) -> None:
        rng = np.random.default_rng(seed)
        node_ids = [int(n) for n in rng.choice(2**40, size=num_nodes, replace=False)]
        self.client_app = client_app
        self.fail_partitions = set(fail_partitions)
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for pid, node_id in enumerate(node_ids)
        }
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            context = self.contexts[message.metadata.dst_node_id]
            pid = context.node_config["partition-id"]
            try:
                if pid in self.fail_partitions and message.metadata.message_type == "train":
                    raise RuntimeError(f"injected failure on partition {pid}")
                reply = self.client_app(copy.deepcopy(message), context)
            except Exception as exc:
                reply = Message(
                    Error(code=2, reason=f"Traceback ...\n{type(exc).__name__}: {exc}"),
                    reply_to=message,
                )
            replies.append(reply)
        return replies


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
