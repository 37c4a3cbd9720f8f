"""All glue to Flower's simulation engine (Ray) lives here, so an API move touches one file."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedkd.errors import ConfigError
from fedkd.run.interrupt import (
    RunInterrupted,
    SignalInterrupt,
    check_stop,
    clear_stop,
    request_stop,
    signal_label,
    stop_requested,
    stop_signal,
)

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("ray_cpu", "ray_gpu", "inline", "batched")
#: Backends that run every client in this process (no Ray).
IN_PROCESS_BACKENDS = ("inline", "batched")
#: Who runs the Ray backends: fedkd's actor pool (:mod:`simulations.pool`) or Flower's
#: simulation engine (``run_simulation``).
ENGINE_NAMES = ("fedkd", "flower")


def backend_config(backend: Mapping[str, Any]) -> dict[str, Any]:
    """Translate the ``backend`` config group into Flower's simulation backend config.

    ``client_resources`` become Ray actor options: ``num_cpus`` and ``num_gpus`` size the
    actor pool (actors = cores / num_cpus), ``max_restarts`` makes Ray restart a dead
    actor instead of returning a broken one to the pool.
    """
    name = backend.get("name")
    if name not in BACKEND_NAMES:
        raise ConfigError(f"backend.name must be one of {BACKEND_NAMES}, got {name!r}")
    num_cpus = backend.get("num_cpus", 1)
    num_gpus = backend.get("num_gpus", 0.0)
    if not isinstance(num_cpus, int | float) or num_cpus <= 0:
        raise ConfigError(f"backend.num_cpus must be > 0, got {num_cpus!r}")
    if not isinstance(num_gpus, int | float) or num_gpus < 0:
        raise ConfigError(f"backend.num_gpus must be >= 0, got {num_gpus!r}")
    if name in IN_PROCESS_BACKENDS:
        threads = backend.get("compute_threads", 1)
        if name == "batched" and (not isinstance(threads, int) or threads < 0):
            raise ConfigError(
                f"backend.compute_threads must be an integer >= 0 (0: every core), got {threads!r}"
            )
        return {}
    engine = backend.get("engine", "fedkd")
    if engine not in ENGINE_NAMES:
        raise ConfigError(f"backend.engine must be one of {ENGINE_NAMES}, got {engine!r}")
    address = backend.get("address")
    if address and engine != "fedkd":
        raise ConfigError(
            "backend.address (joining a Ray cluster) needs backend.engine=fedkd; Flower's "
            "simulation engine always starts its own local Ray"
        )
    if address is not None and not isinstance(address, str):
        raise ConfigError(f"backend.address must be a string like 'HOST:6379', got {address!r}")
    max_actors = backend.get("max_actors")
    if max_actors is not None and (not isinstance(max_actors, int) or max_actors < 1):
        raise ConfigError(f"backend.max_actors must be a positive integer, got {max_actors!r}")
    if name == "ray_gpu" and num_gpus == 0:
        raise ConfigError("backend ray_gpu needs backend.num_gpus > 0 (a fraction per client)")
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "ERROR",
        "log_to_driver": bool(backend.get("log_to_driver", True)),
    }
    if backend.get("total_cpus"):
        init_args["num_cpus"] = int(backend["total_cpus"])
    return {
        "client_resources": {
            "num_cpus": num_cpus,
            "num_gpus": float(num_gpus),
            "max_restarts": int(backend.get("max_restarts", 2)),
        },
        "init_args": init_args,
    }


def set_ray_environment() -> None:
    """Environment every Ray run of fedkd needs (unless the user set it): no telemetry,
    every worker's log lines shown, Ray leaving CUDA_VISIBLE_DEVICES alone on CPU actors."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def run_on_ray(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_clients: int,
    backend: Mapping[str, Any],
    verbose: bool = False,
) -> None:
    """Run the apps with Flower's simulation runtime on a local Ray cluster.

    Exceptions raised by the ServerApp propagate to the caller.
    """
    set_ray_environment()
    config = backend_config(backend)
    if not verbose:
        # Flower logs every round at INFO and warns that run_simulation is deprecated
        # (it is still the supported in-process entry point in 1.42); fedkd's own
        # progress display reports rounds instead.
        logging.getLogger("flwr").setLevel(logging.ERROR)
        for name in ("alembic", "alembic.runtime.plugins", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)
    import ray
    from flwr.simulation import run_simulation  # deferred: importing it is slow

    from simulations.pool import shutdown_pool

    shutdown_pool()  # actors a sweep's earlier job kept would hold the cores
    started_here = not ray.is_initialized()
    if started_here:
        init_flowers_ray(config["init_args"])
    try:
        # After ray.init: its SIGTERM handler would abort the driver mid-run.
        with stop_on_ctrl_c(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_config=config,
                verbose_logging=verbose,
            )
    finally:
        if started_here and ray.is_initialized():  # Flower shuts it down itself, normally
            ray.shutdown()


def init_flowers_ray(init_args: Mapping[str, Any]) -> None:
    """``ray.init`` as Flower's RayBackend does it (``include_dashboard=False`` unless set,
    the driver's ``sys.path`` as the workers' PYTHONPATH); the backend then finds Ray
    initialized and uses it. Done here so that fedkd's stop handlers can be installed after
    Ray's own SIGTERM handler."""
    import sys

    import ray

    args = {"include_dashboard": False, **init_args}
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **args)


#: The signals that stop a run cleanly: Ctrl-C, and a process manager's SIGTERM.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_stop_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM ask the ServerApp to stop (see :mod:`fedkd.run.interrupt`); a
    second one raises at once. Returns the previous handlers (none off the main thread).

    Ray's ``ray.init`` installs a SIGTERM handler of its own (``sys.exit``, which aborts the
    driver mid-run); installed after it, this one is in force during the run."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, frame: Any) -> None:
        if stop_requested():
            raise SignalInterrupt(f"interrupted ({signal_label(signum)}), forced", signum=signum)
        logger.warning("interrupted (%s): stopping the run (again to force)", signal_label(signum))
        request_stop(signum)

    return {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}


@contextlib.contextmanager
def stop_on_ctrl_c(*, handle_sigint: bool = True) -> Iterator[None]:
    """Run a federation with SIGINT and SIGTERM asking its ServerApp to stop
    (:func:`install_stop_handlers`).

    The stop flag is cleared before and after; on the way out the previous handlers come
    back, and :class:`RunInterrupted` (with the signal) is raised if a stop was asked for
    (the ServerApp ended early). ``handle_sigint=False`` leaves the signal handlers alone
    (inside a Ray task, whose signals are Ray's) and only minds the flag.
    """
    clear_stop()
    previous = install_stop_handlers() if handle_sigint else {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        interrupted, signum = stop_requested(), stop_signal()
        clear_stop()
    if interrupted:  # the ServerApp ended early and the engine has shut down
        raise RunInterrupted(f"interrupted ({signal_label(signum)})", signum=signum)


class InlineGrid(Grid):
    """A Grid that delivers Messages to a ClientApp in this process, one node at a time.

    No Ray, no threads (``synchronous``: a message runs while it is pushed): each message
    is deep-copied (as deployment would serialize it) and handed to
    ``client_app(message, context)`` with one persistent Context per simulated node
    (``partition-id``, ``num-partitions``). A ClientApp exception becomes an Error reply, as
    in Flower's engines. Node ids are random like Flower's. Results equal a Ray run of the
    same config (tests/simulations/test_run.py checks it); what is lost is
    parallelism across clients, what is gained is no start-up cost.
    """

    synchronous = True

    def __init__(self, client_app: ClientApp, num_nodes: int, *, seed: int = 0) -> None:
        rng = random.Random(seed)
        node_ids = rng.sample(range(1, 2**53), num_nodes)
        self.client_app = client_app
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": index, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for index, node_id in enumerate(node_ids)
        }
        self._run: Any = None
        self._replies: dict[str, Message] = {}
        self._next_id = 0

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(  # deprecated upstream; fedkd builds Messages directly
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def deliver(self, message: Message) -> Message:
        """Run the ClientApp on one message; an exception becomes an Error reply."""
        context = self.contexts[message.metadata.dst_node_id]
        check_stop("while clients were training")
        try:
            return self.client_app(copy_message(message), context)
        except Exception as exc:  # the engine's job, as Flower's workers do
            logger.debug("ClientApp raised on node %s", context.node_id, exc_info=True)
            return Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            self._next_id += 1
            ids.append(str(self._next_id))
            self._replies[ids[-1]] = self.deliver(message)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver one by one. Clients run one after another here, but in parallel on the
        other engines, so the deadline applies to each message's own run time: a reply
        that took longer than ``timeout`` is dropped as too late, as Flower's grids drop
        replies that miss the deadline."""
        replies = []
        for message in messages:
            started = time.monotonic()
            reply = self.deliver(message)
            if timeout is not None and time.monotonic() - started > timeout:
                logger.info(
                    "reply from node %s arrived after the timeout", reply.metadata.src_node_id
                )
                continue
            replies.append(reply)
        return replies


def copy_message(message: Message) -> Message:
    """The message as a client receives it, independent of the server's object: new
    records and metadata; the arrays, whose bytes nothing changes, are shared. What
    ``copy.deepcopy`` gives, at a fraction of its cost for a broadcast to many clients.
    INTERNAL API (``Message(metadata=...)``)."""
    content = RecordDict()
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            arrays = ArrayRecord()
            for key, array in record.items():
                arrays[key] = array
            content[name] = arrays
        else:  # config and metric records: small, and their lists are mutable
            content[name] = copy.deepcopy(record)
    metadata = copy.copy(message.metadata)
    return Message(content=content, metadata=metadata)  # type: ignore[call-overload]


def set_task_identity() -> None:
    """Flower's runtimes set a process-wide identity before a ServerApp builds Messages
    (run_simulation does the same); Messages cannot be created without it. INTERNAL API."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def run_inline(server_app: ServerApp, client_app: ClientApp, *, num_clients: int) -> None:
    """Run the apps in this process on an :class:`InlineGrid` (``backend=inline``)."""
    set_task_identity()
    grid = InlineGrid(client_app, num_clients)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    # a stop signal takes effect between two clients or two rounds, never between a round's
    # metrics row and its checkpoint (a second signal still raises at once)
    with warnings.catch_warnings(), stop_on_ctrl_c():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        server_app(grid, context)
