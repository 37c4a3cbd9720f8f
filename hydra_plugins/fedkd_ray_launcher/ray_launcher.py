"""``hydra/launcher=fedkd_ray``: each job of a ``-m`` sweep runs as a Ray task on a cluster.

The sweep's jobs are submitted at once; Ray runs as many side by side as the cluster's free
CPUs allow (``hydra.launcher.cpus_per_job`` each) and the launcher waits for all of them.
A job that raises is recorded as failed without stopping the others, as with Hydra's basic
launcher. Jobs write their run directories where the sweep says (``hydra.sweep.dir``), on
the machine that runs them: on a real cluster, point it at a file system every node
mounts. A job whose config asks for a Ray backend (``backend=ray_cpu``) runs its clients
as actors on the same cluster.
"""

# No ``from __future__ import annotations``: Hydra loads plugin modules without putting them
# in sys.modules, where dataclasses would look postponed annotations up.
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035 (OmegaConf reads these at run time)

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from fedkd.config import sweep_job_configs

logger = logging.getLogger(__name__)


@dataclass
class FedkdRayLauncherConf:
    _target_: str = "hydra_plugins.fedkd_ray_launcher.ray_launcher.FedkdRayLauncher"
    address: Optional[str] = None  # noqa: UP045  "HOST:6379" of a cluster; null: a local Ray
    cpus_per_job: float = 1.0  # CPUs a job holds while it runs (its driver)
    runtime_env: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006  # Ray runtime_env for the jobs


ConfigStore.instance().store(
    group="hydra/launcher", name="fedkd_ray", node=FedkdRayLauncherConf, provider="fedkd"
)


def _run_one(
    hydra_context: HydraContext,
    task_function: TaskFunction,
    sweep_config: DictConfig,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """One job, inside a Ray worker: Hydra's own ``run_job`` with the sweep's globals."""
    setup_globals()
    Singleton.set_state(singleton_state)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class FedkdRayLauncher(Launcher):
    def __init__(
        self,
        address: str | None = None,
        cpus_per_job: float = 1.0,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        if cpus_per_job < 0:
            raise ValueError(f"hydra.launcher.cpus_per_job must be >= 0, got {cpus_per_job}")
        self.address = address
        self.cpus_per_job = float(cpus_per_job)
        self.runtime_env = dict(runtime_env or {})
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        started_here = not ray.is_initialized()
        if started_here:
            init: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR"}
            if self.address:
                init["address"] = self.address
            if self.runtime_env:
                init["runtime_env"] = OmegaConf.to_container(
                    OmegaConf.create(self.runtime_env), resolve=True
                )
            ray.init(**init)
        where = self.address or "a local Ray"
        logger.info("Launching %s jobs on %s", len(job_overrides), where)
        remote = ray.remote(_run_one).options(num_cpus=self.cpus_per_job, max_retries=0)
        configs = sweep_job_configs(
            self.config, self.hydra_context, job_overrides, initial_job_idx, logger
        )
        refs = [
            remote.remote(self.hydra_context, self.task_function, config, Singleton.get_state())
            for config in configs
        ]
        try:
            return list(ray.get(refs))
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            if started_here:
                ray.shutdown()
