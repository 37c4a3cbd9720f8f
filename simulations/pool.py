"""fedkd's own Ray engine (``backend.engine=fedkd``, the default for ``ray_cpu``/``ray_gpu``).

:func:`run_on_pool` runs a ServerApp on a :class:`~simulations.ray_grid.RayGrid`: the
in-process grid with the ClientApp calls farmed out to a pool of Ray actors
(:class:`~simulations.ray_grid.ClientWorker`), one per ``backend.num_cpus`` cores. What the
grid does per message is in :mod:`simulations.ray_grid`; this module starts and stops Ray
and the actors:

- the actors start while the driver starts the run (run directory, round 0): nothing
  waits for them until the first message does;
- within one process, Ray and the actors can stay up from one run to the next
  (:func:`keep_pool`, which the jobs of a ``-m`` sweep turn on): a run with the same Ray
  settings reuses Ray, and with the same client resources, torch threads and environment
  also the actors (each forgets the previous run's cached data first). They are shut down
  at process exit, or at once when a run fails or is interrupted.

Flower's simulation engine (``backend.engine=flower``) is kept in
:func:`simulations.engine.run_on_ray`; docs/BENCHMARKS.md compares the two.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedkd.errors import ConfigError
from simulations.engine import (
    backend_config,
    set_ray_environment,
    set_task_identity,
    stop_on_ctrl_c,
)
from simulations.ray_grid import ACTOR_DIED, ClientWorker, RayGrid

__all__ = [
    "ACTOR_DIED",
    "ClientWorker",
    "RayGrid",
    "keep_pool",
    "kept_pool",
    "pool_size",
    "run_on_pool",
    "shutdown_pool",
]

logger = logging.getLogger(__name__)

#: Results of actor calls up to this size travel back inside the call's reply instead of
#: through Ray's object store (Ray's default is 100 KB, less than one batch of short
#: messages' replies): no object-store round trip and less work for the raylet, about 7 %
#: off a tiny round on 2 cores. Only for a Ray this module starts (INTERNAL Ray setting).
DIRECT_RESULT_BYTES = 8 * 2**20


@dataclass
class KeptPool:
    """Ray (started by this module) and the actors one run leaves for the next."""

    ray_settings: str  # the ``ray.init`` arguments, as compared between runs
    actor_settings: str  # resources, torch threads and environment of the actors
    client_app: ClientApp
    actors: list[Any] = field(default_factory=list)
    runs: int = 0  # runs served so far


_keep = False
_kept: KeptPool | None = None
_exit_hook = False


def keep_pool(keep: bool = True) -> None:
    """Keep Ray and the actor pool up between the runs of this process (``True``), or not.

    Hydra's multirun (``simulations.run -m``) turns it on, so the jobs of a sweep share one
    Ray and one pool. What is kept is shut down at process exit, when a run fails or is
    interrupted, when a run needs other Ray settings, and by ``keep_pool(False)``.
    """
    global _keep, _exit_hook
    _keep = keep
    if not keep:
        shutdown_pool()
    elif not _exit_hook:
        atexit.register(shutdown_pool)
        _exit_hook = True


def kept_pool() -> KeptPool | None:
    """What the last run left up for the next (None when nothing is kept)."""
    return _kept


def shutdown_pool() -> None:
    """Remove the kept actors and shut down the Ray this module started (if any)."""
    global _kept
    kept, _kept = _kept, None
    if kept is not None:
        _stop(kept.actors, shutdown=True)


def _stop(actors: list[Any], *, shutdown: bool) -> None:
    import ray

    if not ray.is_initialized():
        return
    for actor in actors:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(actor)
    if shutdown:
        ray.shutdown()


def pool_size(
    backend: Mapping[str, Any],
    num_clients: int,
    resources: Mapping[str, float],
    free: Mapping[str, float] | None = None,
) -> int:
    """Actors for this run: what the cluster's CPUs (and GPUs) hold, at most one per client.

    ``free`` (a shared cluster's resources not in use now) sizes the pool when given; when
    nothing is free, one actor is created and waits for its resources.
    """
    num_cpus = float(backend.get("num_cpus", 1))
    num_gpus = float(backend.get("num_gpus", 0.0))

    def fitting(available: Mapping[str, float]) -> int:
        count = int(available.get("CPU", 0) // num_cpus)
        if num_gpus > 0:
            count = min(count, int(available.get("GPU", 0) // num_gpus))
        return count

    fits = fitting(resources)
    if fits >= 1 and free is not None:
        fits = max(1, fitting(free))
    if fits < 1:
        raise ConfigError(
            f"the Ray cluster has {resources.get('CPU', 0)} CPUs and "
            f"{resources.get('GPU', 0)} GPUs: not enough for one client with "
            f"backend.num_cpus={num_cpus}, backend.num_gpus={num_gpus}"
        )
    limit = backend.get("max_actors")
    if limit:
        fits = min(fits, int(limit))
    return max(1, min(fits, num_clients))


def _init_args(backend: Mapping[str, Any], config: Mapping[str, Any], verbose: bool) -> dict:
    init_args = dict(config["init_args"])
    if verbose:
        init_args["logging_level"] = "INFO"
    address = backend.get("address")
    if address:
        init_args.pop("num_cpus", None)  # a cluster has its own resources
        init_args["address"] = str(address)
        if backend.get("runtime_env"):
            init_args["runtime_env"] = dict(backend["runtime_env"])
    else:  # a Ray of our own: call results return with the reply, not via the object store
        init_args["_system_config"] = {"max_direct_call_object_size": DIRECT_RESULT_BYTES}
    return init_args


def _pool_line(size: int, num_clients: int, cluster: Mapping[str, float], runs: int) -> str:
    """The one log line about the pool: actors, clients, and the cluster's CPUs and GPUs."""
    gpus = int(cluster.get("GPU", 0))
    line = (
        f"Ray: {size} client actor{'s' * (size != 1)} for {num_clients} clients on "
        f"{int(cluster.get('CPU', 0))} CPUs" + (f" and {gpus} GPUs" if gpus else "")
    )
    return line + (f" (kept from {runs} earlier run{'s' * (runs != 1)})" if runs else "")


def run_on_pool(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_clients: int,
    backend: Mapping[str, Any],
    verbose: bool = False,
) -> None:
    """Run the apps on a :class:`RayGrid`: a local Ray instance, or the cluster at
    ``backend.address``. Actors are removed afterwards and a local Ray is shut down,
    unless :func:`keep_pool` keeps them for the next run of this process."""
    import ray

    global _kept
    set_ray_environment()
    config = backend_config(backend)
    init_args = _init_args(backend, config, verbose)
    ray_settings = repr(sorted(init_args.items()))
    if _kept is not None and (_kept.ray_settings != ray_settings or not ray.is_initialized()):
        shutdown_pool()
    kept, _kept = _kept, None  # this run's now; handed back at the end if still fit
    started_here = kept is None and not ray.is_initialized()
    if started_here:
        ray.init(**init_args)
    owns_ray = kept is not None or started_here
    # Inside a Ray task (a sweep job on a cluster, see hydra_plugins.fedkd_ray_launcher) the
    # worker's signals are Ray's; elsewhere Ctrl-C and SIGTERM stop the run cleanly (the
    # handlers go in after ray.init, which installs a SIGTERM handler of its own).
    in_task = ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    actors: list[Any] = [] if kept is None else kept.actors
    reusable = False
    try:
        with stop_on_ctrl_c(handle_sigint=not in_task):
            # A Ray this run did not start is shared: size the pool by what is free now.
            free = None if owns_ray else ray.available_resources()
            size = pool_size(backend, num_clients, ray.cluster_resources(), free)
            resources = config["client_resources"]
            env = {k: v for k, v in os.environ.items() if k.startswith(("FLWR_", "FEDKD_"))}
            threads = int(backend.get("torch_threads", 1))
            actor_settings = repr((sorted(resources.items()), threads, sorted(env.items())))
            if kept is not None and (
                kept.actor_settings != actor_settings or kept.client_app is not client_app
            ):
                _stop(actors, shutdown=False)
                actors = []
            for actor in actors:  # queued before this run's messages, so it runs first
                actor.new_run.remote()
            if len(actors) < size:
                worker = ray.remote(ClientWorker).options(
                    num_cpus=resources["num_cpus"],
                    num_gpus=resources["num_gpus"],
                    max_restarts=resources["max_restarts"],
                    max_task_retries=0,
                )
                # not waited for: they import and start while this process starts the run
                missing = size - len(actors)
                actors += [worker.remote(client_app, threads, env) for _ in range(missing)]
            runs = 0 if kept is None else kept.runs
            logger.info("%s", _pool_line(size, num_clients, ray.cluster_resources(), runs))
            set_task_identity()
            grid = RayGrid(client_app, num_clients, actors[:size])
            context = Context(
                run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                server_app(grid, context)
        reusable = grid.reusable()  # after the with: an interrupted run raised on its way out
    finally:
        if _keep and owns_ray and not in_task and reusable:
            _kept = KeptPool(ray_settings, actor_settings, client_app, actors, runs + 1)
        else:
            _stop(actors, shutdown=owns_ray)
