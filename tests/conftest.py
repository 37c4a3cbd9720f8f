"""Shared test helpers: task identity for building Messages, an in-process fake grid, the
small configs the strategy and run tests compose, the ``simulations.run`` command line and
registering test entries in fedkd's registries."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Error, Message
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, settings

from simulations.engine import InlineGrid

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]

# Hypothesis: reproducible in CI (derandomized, no example database), no deadline (2 shared
# cores), and fixtures such as ``task_identity`` reused across a test's examples. Property
# tests take ``fedkd-fast`` (tens of cases each, the fast tier) or ``fedkd-full`` (marked
# slow: the thousands of cases of the full suite) with ``@settings(settings.get_profile(...))``.
_HYPOTHESIS = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
settings.register_profile("fedkd-fast", max_examples=20, **_HYPOTHESIS)
settings.register_profile("fedkd-full", max_examples=250, **_HYPOTHESIS)
settings.register_profile("fedkd", **_HYPOTHESIS)
settings.load_profile("fedkd")


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


def small_task(num_clients: int, *extra: str) -> list[str]:
    """Overrides of the small task of the strategy tests: 300 synthetic records of 6 features
    in 3 classes, split iid over ``num_clients`` clients that train one local epoch; then
    ``extra``."""
    return [
        "dataset=synthetic",
        "dataset.num_samples=300",
        "dataset.num_features=6",
        "dataset.num_classes=3",
        "partition=iid",
        f"num_clients={num_clients}",
        "client.epochs=1",
        *extra,
    ]


@pytest.fixture
def small_overrides() -> Callable[..., list[str]]:
    """:func:`small_task`: ``small_overrides(num_clients, *extra)``."""
    return small_task


@pytest.fixture
def small_plan() -> Callable[..., Any]:
    """``small_plan(*extra)``: the run plan (``prepare_run``) of the small task on 4 clients
    with 8-unit models and no progress display, plus ``extra`` overrides."""
    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config

    def plan(*extra: str) -> Any:
        models = ("model.hidden=[8]", "student.hidden=[8]", "progress=false")
        return prepare_run(compose_config(small_task(4, *models, *extra)))

    return plan


def two_round_run(*extra: str) -> list[str]:
    """Overrides of the small whole runs: 300 synthetic records (default partition) on 4
    clients, 2 rounds of one local epoch; then ``extra``."""
    return [
        "dataset=synthetic",
        "dataset.num_samples=300",
        "num_clients=4",
        "num_rounds=2",
        "client.epochs=1",
        *extra,
    ]


@pytest.fixture
def two_round_overrides() -> Callable[..., list[str]]:
    """:func:`two_round_run`: ``two_round_overrides(*extra)``."""
    return two_round_run


def run_simulation_cli(
    *args: str,
    cwd: Path = REPO,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m simulations.run *args`` in ``cwd`` without telemetry (``env`` added to the
    environment), its output captured as text."""
    full_env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "simulations.run", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def simulation_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`run_simulation_cli`: ``simulation_cli(*args, cwd=..., timeout=..., env=...)``."""
    return run_simulation_cli


@dataclass(frozen=True)
class Registration:
    """The public functions of one registry (datasets, teacher-target rules), for tests that
    register an entry of their own."""

    register: Callable[[Any], Any]
    unregister: Callable[[str], Any]
    names: Callable[[], tuple[str, ...]]

    @contextlib.contextmanager
    def registered(self, entry: Any) -> Iterator[Any]:
        """``entry`` registered for the block (yields what ``register`` returns); removed
        afterwards, when its name must be gone from ``names()``."""
        registered = self.register(entry)
        try:
            yield registered
        finally:
            self.unregister(entry.name)
        assert entry.name not in self.names()

    @contextlib.contextmanager
    def unregistered(self, entry: Any) -> Iterator[None]:
        """``entry`` removed for the block and registered again afterwards."""
        self.unregister(entry.name)
        try:
            yield
        finally:
            self.register(entry)

    def check_misuse(self, entry: Any, kind: str) -> None:
        """A registered ``entry`` cannot be registered twice, nor an unknown name removed."""
        with pytest.raises(ValueError, match="already registered"):
            self.register(entry)
        with pytest.raises(KeyError, match=f"no {kind} 'nope'"):
            self.unregister("nope")


@pytest.fixture
def dataset_registration() -> Registration:
    """:class:`Registration` of the dataset registry (:mod:`fedkd.data`)."""
    from fedkd.data import dataset_names, register_dataset, unregister_dataset

    return Registration(register_dataset, unregister_dataset, dataset_names)


@pytest.fixture
def target_rule_registration() -> Registration:
    """:class:`Registration` of the teacher-target rule registry (:mod:`fedkd.distill`)."""
    from fedkd.distill import register_target_rule, target_rule_names, unregister_target_rule

    return Registration(register_target_rule, unregister_target_rule, target_rule_names)


#: The environment variable a test puts on the commands it starts, to find them (and the Ray
#: processes, which inherit the command's environment) in ``/proc``.
MARKER_VAR = "FEDKD_TEST_MARKER"


def marked_pids(marker: str) -> list[int]:
    """Live, non-zombie processes whose environment holds ``MARKER_VAR=<marker>``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def leftover_pids(marker: str, wait: float) -> list[int]:
    """The marked processes still alive after up to ``wait`` seconds (Ray reaps its own
    asynchronously); they are killed, never left running, and returned for the test's
    assertion."""
    deadline = time.monotonic() + wait
    while (left := marked_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture
def leftover_processes() -> Callable[[str, float], list[int]]:
    """:func:`leftover_pids`: ``leftover_processes(marker, wait)``."""
    return leftover_pids
