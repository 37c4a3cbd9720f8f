"""All glue to Flower's simulation engine (Ray) lives here, so an API move touches one file."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("ray_cpu", "ray_gpu")


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
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    config = backend_config(backend)
    if not verbose:
        # Flower logs every round at INFO and warns that run_simulation is deprecated
        # (it is still the supported in-process entry point in 1.42); fedkd's own
        # progress display reports rounds instead.
        logging.getLogger("flwr").setLevel(logging.ERROR)
        for name in ("alembic", "alembic.runtime.plugins", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from flwr.simulation import run_simulation  # deferred: importing it is slow

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_clients,
            backend_config=config,  # type: ignore[arg-type]
            verbose_logging=verbose,
        )
