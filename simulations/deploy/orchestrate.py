"""The end-to-end local deployment (:func:`deploy`) and the command line (:func:`main`)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedkd.apps.flwr_run import LAUNCHER_VAR, default_run_dir
from fedkd.errors import ConfigError
from fedkd.run.console import ConsoleLogHandler
from fedkd.run.interrupt import exit_code
from fedkd.run.progress import print_summary
from fedkd.run.results import check_fresh_run_dir
from simulations.deploy.errors import DeployError
from simulations.deploy.options import (
    DEFAULT_TIMEOUT_SECONDS,
    check_data_files,
    run_config_argument,
    settle_num_clients,
    split_arguments,
    validate_config,
)
from simulations.deploy.pki import NodeKey, load_certificates, make_certificates, make_node_key
from simulations.deploy.processes import (
    CONNECTION,
    STARTUP_TIMEOUT_SECONDS,
    LocalFederation,
    ProcessRecord,
    _signals_ignored,
    _signals_raise,
    check_port_free,
    free_port,
    free_ports,
)
from simulations.deploy.proctree import alive
from simulations.deploy.summary import StudentSize, settle_summary

# The original single-module name, so log lines read as before the split.
logger = logging.getLogger("simulations.deploy_local")

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A deployment's run directory is a normal run's (``outputs/<date>/<time>-<strategy>-
#: <dataset>``) with this suffix; its ``logs/`` holds every process's log.
RUN_DIR_SUFFIX = "-deploy"
LOGS_DIR = "logs"


@dataclass
class RunResult:
    """What one run on a SuperLink this launcher started produced (``deploy_local``,
    ``flwr_local``).

    ``status`` is Flower's final run status without the ``finished:`` prefix
    (``completed``, ``failed``, ``stopped``), or ``timeout``; ``summary`` is the run
    directory's ``summary.json`` (``None`` when the ServerApp never wrote one).
    """

    status: str
    run_id: int | None
    run_dir: Path
    summary: dict[str, Any] | None
    logs_dir: Path
    status_details: str = ""
    processes: list[ProcessRecord] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Flower finished the run as completed and the ServerApp's summary agrees."""
        return (
            self.status == "completed"
            and self.summary is not None
            and self.summary.get("status") == "completed"
        )


#: A launcher's result type (:func:`run_and_settle`, :func:`launcher_main`).
R = TypeVar("R", bound=RunResult)


@dataclass(kw_only=True)
class DeployResult(RunResult):
    """A deployment's run, with its SuperNodes' ids and its work directory."""

    node_ids: list[int]
    workdir: Path


# ---------------------------------------------------------------------------- deploy


def deploy(
    overrides: Sequence[str],
    *,
    nodes: int | None = None,
    port: int | None = None,
    out_dir: Path | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    workdir: Path | None = None,
    certs_dir: Path | None = None,
    data_files: bool | Sequence[Path] = False,
    node_data: dict[int, Path] | None = None,
    echo: bool = False,
    on_ready: Callable[[LocalFederation], None] | None = None,
) -> DeployResult:
    """Validate the config, deploy SuperLink + ``nodes`` SuperNodes on 127.0.0.1, run once.

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides, as for ``python -m simulations.run``.
    nodes : int, optional
        Number of SuperNodes; must equal ``num_clients`` (see :func:`settle_num_clients`).
    port : int, optional
        The SuperLink's port; default a free one.
    out_dir : Path, optional
        The run directory; default ``outputs/<date>/<time>-<strategy>-<dataset>-deploy``.
        Every process's log goes to its ``logs/``.
    timeout_seconds : float, default 600
        For the whole deployment; an unfinished run ends with status ``timeout``.
    workdir : Path, optional
        Certificates, keys, ``FLWR_HOME``s; kept afterwards. Default: a temporary
        directory, removed at the end.
    certs_dir : Path, optional
        ``ca.crt``, ``server.crt``, ``server.key`` to use instead of a throwaway CA.
    data_files : bool or sequence of Path, default False
        ``True``: write each node's partition to its own data file and pass it as
        ``data-file``; a sequence: the user's own files, one per node (its length must
        equal ``nodes``).
    node_data : dict, optional
        ``{node index: path}``: a data file for that node (overrides ``data_files``).
    echo : bool, default False
        Print ``flwr run --stream``'s output as it arrives.
    on_ready : callable, optional
        Called with the federation once every SuperNode is connected, before the submit.

    Raises
    ------
    ConfigError
        Bad overrides or options, before any process starts.
    DeployError
        A step failed (message names it); every started process has been stopped.
    DeployInterrupted
        SIGINT or SIGTERM; every started process has been stopped.

    From the first started process on, every exit (completed, failed, timeout, interrupted)
    leaves ``summary.json`` in the run directory (:func:`settle_summary`).
    """
    if not isinstance(data_files, bool):
        data_files = tuple(Path(f).resolve() for f in data_files)
    started = time.monotonic()
    deadline = started + timeout_seconds
    overrides, nodes = settle_num_clients(overrides, nodes)
    check_data_files(data_files, nodes)
    cfg, student = validate_config(overrides)
    if port is not None:
        check_port_free(port)
    run_dir = (out_dir or default_run_dir(cfg, suffix=RUN_DIR_SUFFIX)).resolve()
    check_fresh_run_dir(run_dir)  # an existing run's results are never overwritten
    if not (REPO_ROOT / "pyproject.toml").is_file():
        raise DeployError(f"no pyproject.toml in {REPO_ROOT}: the Flower app must be a checkout")
    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="fedkd-deploy-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    try:
        run_config = run_config_argument(overrides, run_dir, spill_dir=work)
        credentials = (
            load_certificates(certs_dir)
            if certs_dir is not None
            else make_certificates(work / "certs")
        )
        keys = [make_node_key(work / "keys", f"node-{i}") for i in range(nodes)]
        if isinstance(data_files, tuple):
            files = dict(enumerate(data_files))
        else:
            files = write_node_data(cfg, work / "data") if data_files else {}
        files.update(node_data or {})
        node_configs = [node_config(i, nodes, files.get(i)) for i in range(nodes)]
        federation = LocalFederation(
            work,
            port=free_port() if port is None else port,
            credentials=credentials,
            echo=echo,
            logs_dir=run_dir / LOGS_DIR,
            env={LAUNCHER_VAR: "simulations.deploy_local"},  # it prints the table itself
        )
        return run_and_settle(
            federation,
            lambda: _run_federation(
                federation,
                keys,
                node_configs,
                run_config,
                run_dir,
                deadline=deadline,
                on_ready=on_ready,
            ),
            launcher="deploy_local",
            timeout=("deploy.timeout", timeout_seconds),
            settle=lambda outcome: _settle(run_dir, cfg, student, outcome, started),
            started=started,
        )
    finally:
        if temporary:  # the logs are in the run directory; the rest is throwaway
            shutil.rmtree(work, ignore_errors=True)


def _settle(
    run_dir: Path,
    cfg: dict[str, Any],
    student: StudentSize,
    outcome: tuple[str, str | None],
    started: float,
) -> dict[str, Any] | None:
    """:func:`settle_summary`; a failure to write it is logged, never masks the exit."""
    status, error = outcome
    try:
        with _signals_ignored():  # a second Ctrl-C must not lose the summary
            return settle_summary(
                run_dir,
                cfg,
                student,
                status=status,
                error=error,
                wall_seconds=time.monotonic() - started,
            )
    except Exception:
        logger.exception("could not write summary.json into %s", run_dir)
        return None


def node_config(index: int, nodes: int, data_file: Path | None) -> str:
    """A SuperNode's ``--node-config``: its partition id, and its data file when it has one."""
    config = f"partition-id={index} num-partitions={nodes}"
    if data_file is not None:
        config += f' data-file="{Path(data_file).resolve()}"'
    return config


def write_node_data(cfg: dict[str, Any], directory: Path) -> dict[int, Path]:
    """Each client's partition of the run's dataset as ``node-<i>.npz`` (what a real client
    would hold), so the deployed ClientApps train from their own files."""
    from fedkd.apps.server import build_setup
    from fedkd.data import get_federated_data, write_local_data

    setup = build_setup(cfg)
    data = get_federated_data(**setup.data_kwargs())
    return {
        index: write_local_data(
            directory / f"node-{index}.npz", data.train_x[rows], data.train_y[rows]
        )
        for index, rows in enumerate(data.partitions)
    }


def _run_federation(
    federation: LocalFederation,
    keys: list[NodeKey],
    node_configs: list[str],
    run_config: str,
    run_dir: Path,
    *,
    deadline: float,
    on_ready: Callable[[LocalFederation], None] | None,
) -> DeployResult:
    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    nodes, started = len(keys), time.monotonic()
    federation.start_superlink(timeout=min(STARTUP_TIMEOUT_SECONDS, left()))
    logger.info("SuperLink listening on 127.0.0.1:%s after %.1f s", federation.port,
                time.monotonic() - started)  # fmt: skip
    node_ids = [federation.register(key) for key in keys]
    ports = free_ports(nodes, exclude=[federation.port])
    for i, (key, config, port) in enumerate(zip(keys, node_configs, ports, strict=True)):
        federation.start_supernode(f"node-{i}", key, node_config=config, port=port)
    for i, registered in enumerate(node_ids):
        connected = federation.wait_connected(
            f"node-{i}", timeout=min(STARTUP_TIMEOUT_SECONDS, left())
        )
        if connected != registered:
            logger.warning("node-%s connected as %s, registered as %s", i, connected, registered)
    logger.info("%s SuperNodes registered and connected after %.1f s", nodes,
                time.monotonic() - started)  # fmt: skip
    if on_ready is not None:
        on_ready(federation)
    run_id, _ = federation.submit(REPO_ROOT, run_config, timeout=left())
    logger.info("run %s stream ended after %.1f s", run_id, time.monotonic() - started)
    if time.monotonic() >= deadline:
        status: dict[str, Any] = {"status": "timeout", "status-details": "deploy.timeout reached"}
        if run_id is not None:
            federation.flwr("stop", str(run_id), CONNECTION)
    else:
        status = federation.wait_finished(run_id, timeout=min(30.0, left()))
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    flower_status = str(status.get("status", "unknown"))
    return DeployResult(
        status=flower_status.removeprefix("finished:"),
        run_id=run_id if run_id is not None else _int_or_none(status.get("run-id")),
        run_dir=run_dir,
        summary=summary,
        node_ids=node_ids,
        logs_dir=federation.logs_dir,
        workdir=federation.workdir,
        status_details=str(status.get("status-details", "")),
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------- CLI


def run_and_settle(
    federation: LocalFederation,
    run: Callable[[], R],
    *,
    launcher: str,
    timeout: tuple[str, float | None],
    settle: Callable[[tuple[str, str | None]], dict[str, Any] | None],
    started: float,
) -> R:
    """``run()`` inside ``federation`` (its processes stopped on every exit; SIGINT and
    SIGTERM raise), then ``summary.json`` settled by ``settle(outcome)`` whichever way it
    ended (:func:`simulations.deploy.summary.settle_summary`): ``completed``; ``failed`` with
    why (a timed-out run names the ``timeout`` option and its seconds; processes still alive
    after the shutdown are an error); ``interrupted``. The one path of ``deploy_local`` and
    ``flwr_local`` from their first started process on."""
    outcome: tuple[str, str | None] = ("failed", f"{launcher} stopped before the run ended")
    try:
        try:
            with _signals_raise(), federation:
                result = run()
        except KeyboardInterrupt as exc:  # DeployInterrupted: every process is stopped
            outcome = ("interrupted", f"{type(exc).__name__}: interrupted ({exc})")
            raise
        except BaseException as exc:
            outcome = ("failed", f"{type(exc).__name__}: {exc}")
            raise
        result.processes = list(federation.records.values())
        still_alive = [r.pid for r in result.processes if alive(r.pid)]
        if still_alive:
            raise DeployError(f"processes still alive after shutdown: {still_alive}")
        option, seconds = timeout
        if result.status == "timeout":
            outcome = ("failed", f"{option} of {seconds or 0:g} s reached")
        elif result.status != "completed":
            outcome = ("failed", f"Flower ended the run {result.status}: {result.status_details}")
        else:
            outcome = ("completed", None)
        result.wall_seconds = time.monotonic() - started
        result.summary = settle(outcome)
        return result
    except BaseException:
        settle(outcome)
        raise


def launcher_main(name: str, launch: Callable[[], R], describe: Callable[[R], str]) -> int:
    """The command line of a launcher (``deploy_local``, ``flwr_local``): logs on fedkd's
    console, then ``launch()``. Exit codes: 0 completed, 1 failed or timed out, 2 invalid
    configuration (nothing started), 130 SIGINT, 143 SIGTERM. At the end, ``describe``'s
    line (how the run ended, stderr) and the results table of the run directory's
    ``summary.json`` (:func:`fedkd.run.progress.print_summary`)."""
    logging.basicConfig(level=logging.INFO, handlers=[ConsoleLogHandler()])  # fedkd/run/console.py
    try:
        result = launch()
    except ConfigError as exc:
        print(f"fedkd {name}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"fedkd {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # DeployInterrupted, or Ctrl-C before it was armed
        print(f"fedkd {name}: interrupted ({exc}); every started process was stopped",
              file=sys.stderr)  # fmt: skip
        return exit_code(exc)  # 130 SIGINT, 143 SIGTERM
    print(describe(result), file=sys.stderr)
    if result.summary is not None:
        print_summary(result.summary, result.run_dir)
    else:
        print(f"fedkd {name}: no summary.json in {result.run_dir}", file=sys.stderr)
    return 0 if result.ok else 1


def ended(result: RunResult) -> str:
    """How a run ended, for :func:`launcher_main`'s line: status, and Flower's details
    when it did not complete."""
    details = f" ({result.status_details})" if result.status_details and not result.ok else ""
    return f"run {result.run_id} {result.status}{details}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 only for a completed run)."""

    def launch() -> DeployResult:
        overrides, options = split_arguments(sys.argv[1:] if argv is None else argv)
        return deploy(
            overrides,
            nodes=options.nodes,
            port=options.port,
            out_dir=options.out_dir,
            timeout_seconds=options.timeout_seconds,
            workdir=options.workdir,
            certs_dir=options.certs_dir,
            data_files=options.data_files,
            echo=True,
        )

    return launcher_main(
        "deploy",
        launch,
        lambda result: (
            f"fedkd deploy: {ended(result)} on {len(result.node_ids)} SuperNodes in "
            f"{result.wall_seconds:.1f} s; every process stopped; logs in {result.logs_dir}"
        ),
    )
