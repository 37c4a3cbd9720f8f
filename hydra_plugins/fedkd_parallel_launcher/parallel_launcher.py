"""``hydra/launcher=fedkd_parallel``: the jobs of a ``-m`` sweep run side by side, one per core.

``hydra.launcher.n_jobs`` worker processes (default: the cores this process may use divided
by the threads a job's torch takes, see :func:`default_workers`) each run jobs one after
another, as Hydra's basic launcher runs all of them in its one process; they serve every
batch the sweeper launches and stop at process exit. Run directories
(``hydra.sweep.dir``/``hydra.sweep.subdir``) and results are those of a sequential sweep.

Meant for the in-process backends (``backend=inline``, ``batched``). A job on a Ray backend
already uses every core through its actors: with any such job the launcher runs the sweep
one job after another in this process instead (sharing one Ray and actor pool, see
:func:`simulations.pool.keep_pool`) and says so.

Ctrl-C or SIGTERM to the command stops the running jobs cleanly (each keeps its finished
rounds and writes ``summary.json`` with ``status: interrupted``), starts no other, and the
command exits with 130 or 143; a second signal makes the jobs stop at once. The worker
processes have a session of their own, so the terminal's Ctrl-C reaches them once, passed
on by the command. A job that raises is recorded as failed without stopping the others, as
with the basic launcher.
"""

# No ``from __future__ import annotations``: Hydra loads plugin modules without putting them
# in sys.modules, where dataclasses would look postponed annotations up.
import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from fedkd.config import sweep_job_configs

logger = logging.getLogger(__name__)

#: How often the command looks at its jobs while it waits (and passes signals on).
POLL_SECONDS = 0.5
#: How the workers start. On Linux they are forked from the command, which has imported
#: fedkd but run nothing yet (no torch thread pool, no Ray, no gRPC channel), so they need
#: not import it again (2 s of a 12-job sweep on 2 cores); elsewhere they are spawned.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"
#: Ctrl-C and a process manager's SIGTERM: passed on to the workers, which stop their jobs.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class FedkdParallelLauncherConf:
    _target_: str = "hydra_plugins.fedkd_parallel_launcher.parallel_launcher.FedkdParallelLauncher"
    n_jobs: Optional[int] = None  # noqa: UP045  worker processes; null: cores / torch threads


ConfigStore.instance().store(
    group="hydra/launcher", name="fedkd_parallel", node=FedkdParallelLauncherConf, provider="fedkd"
)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def uses_ray(config: DictConfig) -> bool:
    """Whether a job's config asks for a Ray backend (``ray_cpu``, ``ray_gpu``)."""
    return str(OmegaConf.select(config, "backend.name", default="")).startswith("ray")


def default_workers(configs: Sequence[DictConfig], cores: int) -> int:
    """One worker per the most cores a job's torch takes (``backend.torch_threads``, and
    ``backend.compute_threads`` of ``backend=batched``; 0, torch's own default, is every
    core), at least one, at most one per job."""
    threads = 1
    for config in configs:
        for key in ("torch_threads", "compute_threads"):
            value = OmegaConf.select(config, f"backend.{key}", default=None)
            if value is not None:
                threads = max(threads, int(value) if int(value) >= 1 else cores)
    return max(1, min(len(configs), cores // threads))


# ---------------------------------------------------------------------- worker processes
_worker: dict[str, Any] = {}


def _start_worker(payload: bytes, stop: Any) -> None:
    """A worker process: a session of its own (the terminal's signals go to the command,
    which passes them on once), signals ignored between jobs, Hydra's globals as in the
    command. It was born with the stop signals blocked (see ``_run_in_workers``)."""
    os.setsid()
    _between_jobs()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    hydra_context, task_function, singleton_state = cloudpickle.loads(payload)
    setup_globals()
    Singleton.set_state(singleton_state)
    _worker.update(hydra_context=hydra_context, task_function=task_function, stop=stop)


def _between_jobs() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _interrupt(signum: int, frame: Any) -> None:
    """During a job and outside fedkd's own handlers: what SIGINT does in a plain Python."""
    raise KeyboardInterrupt(f"signal {signum}")


def _run_one(sweep_config: DictConfig) -> Optional[JobReturn]:  # noqa: UP045
    """One job in a worker, as Hydra's basic launcher runs it (None: the sweep was stopped
    before it began)."""
    if _worker["stop"].is_set():
        return None
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    try:
        result = run_job(
            hydra_context=_worker["hydra_context"],
            task_function=_worker["task_function"],
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    finally:
        _between_jobs()
    if result.status == JobStatus.FAILED:  # the exception must travel back to the command
        error = result._return_value
        try:
            pickle.dumps(error)
        except Exception:
            result.return_value = RuntimeError(f"{type(error).__name__}: {error}")
    return result


# ---------------------------------------------------------------------- the command
class FedkdParallelLauncher(Launcher):
    def __init__(self, n_jobs: Optional[int] = None) -> None:  # noqa: UP045
        if n_jobs is not None and n_jobs < 1:
            raise ValueError(f"hydra.launcher.n_jobs must be >= 1 or null, got {n_jobs}")
        self.n_jobs = n_jobs
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.task_function: Optional[TaskFunction] = None  # noqa: UP045
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045
        self._pool: Optional[ProcessPoolExecutor] = None  # noqa: UP045
        self._pool_workers = 0
        self._stop: Any = None
        self._exit_hook = False

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = sweep_job_configs(
            self.config, self.hydra_context, job_overrides, initial_job_idx, logger
        )
        workers = self.n_jobs or default_workers(configs, available_cores())
        workers = min(workers, len(configs))
        ray_jobs = sum(uses_ray(c) for c in configs)
        if ray_jobs and workers > 1:
            logger.warning(
                "%s of %s jobs use a Ray backend, whose actors take every core: running the "
                "jobs one after another in this process (one Ray and actor pool for all)",
                ray_jobs,
                len(configs),
            )
            workers = 1
        try:
            if workers <= 1:
                return [self._run_here(config) for config in configs]
            return self._run_in_workers(configs, workers)
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _run_here(self, sweep_config: DictConfig) -> JobReturn:
        assert self.hydra_context is not None and self.task_function is not None
        result = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return result

    def _workers(self, workers: int) -> tuple[ProcessPoolExecutor, Any]:
        """The worker processes and their stop flag: started for the first parallel batch
        and kept for the later batches of the sweep (an Optuna study launches one batch
        per step), shut down at process exit."""
        if self._pool is not None and self._pool_workers >= workers:
            return self._pool, self._stop
        self.close()
        context = multiprocessing.get_context(START_METHOD)
        self._stop = context.Event()
        payload = cloudpickle.dumps((self.hydra_context, self.task_function, Singleton.get_state()))
        self._pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(payload, self._stop)
        )
        self._pool_workers = workers
        if not self._exit_hook:
            atexit.register(self.close)
            self._exit_hook = True
        return self._pool, self._stop

    def close(self) -> None:
        """Stop the worker processes (they finish the job they run)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _run_in_workers(self, configs: list[DictConfig], workers: int) -> list[JobReturn]:
        logger.info("Launching %s jobs on %s worker processes", len(configs), workers)
        pool, stop = self._workers(workers)
        signalled: list[int] = []

        def pass_on(signum: int, frame: Any) -> None:
            signalled.append(signum)
            stop.set()
            for pid in list(getattr(pool, "_processes", None) or {}):
                with contextlib.suppress(ProcessLookupError):  # already gone
                    os.kill(pid, signum)

        # The workers start (in submit) with the stop signals blocked, which they inherit
        # until their initializer ignores them: a Ctrl-C while one is still importing must
        # not kill it (the executor would then terminate the others mid-job). Here the
        # signals wait for ``pass_on``.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            futures: list[Future] = [pool.submit(_run_one, config) for config in configs]
            previous = {s: signal.signal(s, pass_on) for s in STOP_SIGNALS}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=POLL_SECONDS)
                if signalled:
                    for future in pending:
                        future.cancel()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        results: list[JobReturn] = []
        for future in futures:
            if future.cancelled():
                continue
            error = future.exception()
            if isinstance(error, SystemExit | KeyboardInterrupt):  # the job was interrupted
                continue
            if error is not None:  # the worker process itself failed
                raise error
            result = future.result()
            if result is not None:
                results.append(result)
        if signalled:
            self.close()
            raise SystemExit(128 + signalled[0])
        return results
