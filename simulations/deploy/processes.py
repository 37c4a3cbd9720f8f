"""Flower's processes (SuperLink, SuperNodes, ``flwr`` CLI calls), started and stopped by pid.

:class:`LocalFederation` serves both launchers: ``simulations.deploy_local`` (a TLS
SuperLink with SuperNode authentication and real SuperNodes) and
``simulations.flwr_local`` (the simulation SuperLink that ``flwr run`` would start, but
owned by the launcher, so it is stopped when the run ends).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from simulations.deploy.errors import DeployError, DeployInterrupted
from simulations.deploy.pki import Credentials, NodeKey, make_node_key
from simulations.deploy.proctree import (
    STOP_GRACE_SECONDS,
    alive,
    descendants,
    group_members,
    start_time,
    stop_pids,
)

# The original single-module name, so log lines read as before the split.
logger = logging.getLogger("simulations.deploy_local")

CONNECTION = "fedkd-local"
STARTUP_TIMEOUT_SECONDS = 60.0  # SuperLink listening / SuperNode connected (both take ~1 s)
CHILD_EXIT_SECONDS = 15.0  # a superexec notices its parent is gone within ~1-10 s

_NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")
_RUN_ID_LINE = re.compile(r"Successfully started run (\d+)")


@dataclass
class ProcessRecord:
    """A process the launcher started, and how it ended."""

    name: str
    pid: int
    log: Path
    exit_code: int | None = None
    exited_by_itself: bool | None = None  # False: the launcher had to stop it


def write_cli_config(flwr_home: Path, *, port: int, ca_cert: Path | None) -> Path:
    """``$FLWR_HOME/config.toml`` with the ``fedkd-local`` connection as the default: TLS
    trusting ``ca_cert``, or plain HTTP on loopback when it is None (a simulation)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    trust = (
        "insecure = true\n"
        if ca_cert is None
        else f"root-certificates = {json.dumps(str(ca_cert.resolve()))}\n"
    )
    path.write_text(
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "127.0.0.1:{port}"\n' + trust
    )
    return path


# ------------------------------------------------------------------------------ ports


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 (it may be taken again before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, *, exclude: Sequence[int] = ()) -> list[int]:
    """``count`` distinct free ports, none of them in ``exclude``."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        while len(ports) < count:  # keep the sockets bound so the OS hands out distinct ports
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in exclude:
                ports.append(port)
    return ports


def check_port_free(port: int) -> None:
    """Raise :class:`DeployError` naming ``port`` when something already listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DeployError(
                f"port {port} on 127.0.0.1 is already in use ({exc.strerror}); choose another "
                "with deploy.port=<port> or leave it out to use a free one"
            ) from None


def _accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -------------------------------------------------------------------------- processes


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class LocalFederation(contextlib.AbstractContextManager["LocalFederation"]):
    """Owns the SuperLink, the SuperNodes and the CLI calls of one loopback deployment.

    Every process is started in its own session (so a terminal's Ctrl-C reaches only the
    launcher, which then stops them in order) and is stopped by pid on exit: SIGTERM,
    SIGKILL after a grace period, then the children each one left in its process group
    (``flower-superexec`` exits by itself once its parent is gone).

    Parameters
    ----------
    workdir : Path
        Certificates, keys and the ``FLWR_HOME`` directories go here.
    port : int
        The SuperLink's port on 127.0.0.1 (HTTPS with ``credentials``, else plain HTTP).
    credentials : Credentials or None
        The SuperLink's TLS files; the CLI and the SuperNodes trust ``ca_cert``. None: a
        simulation SuperLink on loopback without TLS (:meth:`start_simulation_superlink`).
    echo : bool, default False
        Also print ``flwr run --stream``'s output (it always goes to ``flwr-run.log``),
        except the lines in ``hidden_lines``.
    logs_dir : Path, optional
        Every process's log (``<name>.log``); default ``<workdir>/logs``.
    env : mapping, optional
        Added to the environment of every process and CLI call.
    hidden_lines : sequence of str
        The stream's lines that hold one of these texts are not echoed (they stay in
        ``flwr-run.log``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int,
        credentials: Credentials | None,
        echo: bool = False,
        logs_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        hidden_lines: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir.resolve()
        self.port = port
        self.credentials = credentials
        self.echo = echo
        self.logs_dir = (logs_dir or self.workdir / "logs").resolve()
        self.keys_dir = self.workdir / "keys"
        self.flwr_home = self.workdir / "flwr-home"  # the CLI's and the SuperLink's
        self.bin_dir = Path(sys.executable).parent  # flwr starts its helpers by bare name
        self.extra_env = dict(env or {})
        self.hidden_lines = tuple(hidden_lines)
        self.records: dict[str, ProcessRecord] = {}
        self._procs: dict[str, subprocess.Popen[Any]] = {}
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        ca_cert = None if credentials is None else credentials.ca_cert
        write_cli_config(self.flwr_home, port=port, ca_cert=ca_cert)

    # -- environment and commands

    def env(self, flwr_home: Path) -> dict[str, str]:
        """The environment of every Flower process and CLI call."""
        return {
            **os.environ,
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",  # log lines reach the log files as they happen
            "PATH": str(self.bin_dir) + os.pathsep + os.environ.get("PATH", ""),
            **self.extra_env,
        }

    def tool(self, name: str) -> str:
        """Absolute path of a Flower command-line tool installed beside this interpreter."""
        path = shutil.which(name, path=str(self.bin_dir)) or shutil.which(name)
        if path is None:
            raise DeployError(f"'{name}' not found beside {sys.executable} or on PATH")
        return path

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """One ``flwr`` CLI call against this deployment's ``FLWR_HOME``."""
        return subprocess.run(
            [self.tool("flwr"), *args],
            cwd=self.workdir,
            env=self.env(self.flwr_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, name: str, args: list[str], *, cwd: Path, flwr_home: Path) -> ProcessRecord:
        """Start one long-running process with its own log file, cwd and ``FLWR_HOME``."""
        if name in self._procs:
            raise DeployError(f"a process named {name!r} was already started")
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.logs_dir / f"{name}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=self.env(flwr_home),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[name] = proc
        self.records[name] = record = ProcessRecord(name=name, pid=proc.pid, log=log)
        logger.info("started %s (pid %s), log %s", name, proc.pid, log)
        return record

    def process(self, name: str) -> subprocess.Popen[Any]:
        """The ``Popen`` of a started process, by name (``superlink``, ``node-0``, ...)."""
        return self._procs[name]

    @property
    def started_pids(self) -> list[int]:
        """The pids of every long-running process started (not the short ``flwr`` CLI calls)."""
        return [record.pid for record in self.records.values()]

    def _tls(self) -> Credentials:
        if self.credentials is None:
            raise DeployError("a SuperLink with TLS and its SuperNodes need credentials")
        return self.credentials

    # -- SuperLink

    def start_superlink(self, *, timeout: float = STARTUP_TIMEOUT_SECONDS) -> ProcessRecord:
        """Start ``flower-superlink`` with TLS and SuperNode auth; return once it listens."""
        check_port_free(self.port)
        creds = self._tls()
        record = self.start(
            "superlink",
            [
                self.tool("flower-superlink"),
                "--ssl-ca-certfile", str(creds.ca_cert),
                "--ssl-certfile", str(creds.server_cert),
                "--ssl-keyfile", str(creds.server_key),
                "--enable-supernode-auth",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            cwd=self.workdir / "superlink",  # the ServerApp's cwd (FLOWER_FACTS A.17)
            flwr_home=self.flwr_home,
        )  # fmt: skip
        self._wait_listening(timeout)
        return record

    def start_simulation_superlink(
        self, *, cwd: Path, timeout: float = STARTUP_TIMEOUT_SECONDS
    ) -> ProcessRecord:
        """Start the simulation SuperLink that ``flwr run`` starts for its ``local``
        connection (``flwr/cli/local_superlink.py``: ``--insecure --simulation --isolation
        subprocess``), on this federation's port and a free Control API port, without a
        database; return once it listens. ``cwd`` becomes the ServerApp's working directory.
        """
        check_port_free(self.port)
        record = self.start(
            "superlink",
            [
                self.tool("flower-superlink"),
                "--insecure",
                "--simulation",
                "--isolation", "subprocess",
                "--control-api-address", f"127.0.0.1:{free_ports(1, exclude=[self.port])[0]}",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            cwd=cwd,
            flwr_home=self.flwr_home,
        )  # fmt: skip
        self._wait_listening(timeout)
        return record

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _accepts_connections(self.port):
            self._startup_pause(
                "superlink",
                deadline,
                label="flower-superlink",
                before=f"listening on port {self.port}",
                within=f"listen on 127.0.0.1:{self.port} within {timeout:.0f} s",
            )

    def register(self, key: NodeKey) -> int:
        """``flwr supernode register <key.pub> fedkd-local``; returns the new node id."""
        proc = self.flwr(
            "supernode", "register", str(key.public_key), CONNECTION, "--format", "json"
        )
        reply = _json_object(proc.stdout)
        if proc.returncode != 0 or not reply.get("success") or "node-id" not in reply:
            raise DeployError(
                f"registering {key.public_key} failed (rc={proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()[-1000:]}"
            )
        return int(reply["node-id"])

    # -- SuperNodes

    def start_supernode(
        self, name: str, key: NodeKey, *, node_config: str, port: int | None = None
    ) -> ProcessRecord:
        """Start ``flower-supernode`` with its own Runtime API port, cwd and ``FLWR_HOME``."""
        home = self.workdir / "nodes" / name
        return self.start(
            name,
            [
                self.tool("flower-supernode"),
                "--superlink", f"127.0.0.1:{self.port}",
                "--root-certificates", str(self._tls().ca_cert),
                "--auth-supernode-private-key", str(key.private_key),
                "--node-config", node_config,
                "--port", str(free_port() if port is None else port),
            ],
            cwd=home,
            flwr_home=home / "flwr-home",
        )  # fmt: skip

    def start_unregistered_supernode(self, name: str = "intruder") -> ProcessRecord:
        """A SuperNode whose fresh key was never registered: the SuperLink must refuse it."""
        key = make_node_key(self.keys_dir, name)
        return self.start_supernode(name, key, node_config="partition-id=0 num-partitions=1")

    def wait_connected(self, name: str, *, timeout: float = STARTUP_TIMEOUT_SECONDS) -> int:
        """Wait for a SuperNode's ``SuperNode ID: <id>`` log line; returns the id."""
        record = self.records[name]
        deadline = time.monotonic() + timeout
        while not (match := _NODE_ID_LINE.search(_tail(record.log, 20_000))):
            self._startup_pause(
                name, deadline, before="connecting", within=f"connect within {timeout:.0f} s"
            )
        return int(match.group(1))

    def _startup_pause(
        self, name: str, deadline: float, *, label: str | None = None, before: str, within: str
    ) -> None:
        """One pause of a wait for process ``name`` to start: a DeployError naming it as
        ``label`` (default ``name``) if it has exited (``... before <before>``) or
        ``deadline`` has passed (``... did not <within>``)."""
        record, proc = self.records[name], self._procs[name]
        label = label or name
        if proc.poll() is not None:
            raise DeployError(
                f"{label} exited with code {proc.returncode} before {before}; "
                f"log {record.log}:\n{_tail(record.log)}"
            )
        if time.monotonic() > deadline:
            raise DeployError(f"{label} did not {within}; log {record.log}")
        time.sleep(0.2)

    def wait_exit(self, name: str, *, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for a process to exit by itself; its exit code."""
        try:
            return self._procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- runs

    def submit(
        self,
        app_dir: Path,
        run_config: str,
        *,
        timeout: float | None,
        federation_config: str | None = None,
    ) -> tuple[int | None, int | None]:
        """``flwr run <app> fedkd-local --run-config ... --stream``; (run id, exit code).

        ``federation_config`` goes to ``--federation-config`` (a simulation's
        ``num-supernodes=N``). The exit code is ``None`` when the stream was still open
        after ``timeout`` seconds (None: no limit; the ``flwr`` client is then stopped). It
        says little: ``--stream`` exits 0 even when the ServerApp failed, so use
        :meth:`run_status`.
        """
        log = self.logs_dir / "flwr-run.log"
        args = [self.tool("flwr"), "run", str(app_dir), CONNECTION,
                "--run-config", run_config, "--stream"]  # fmt: skip
        if federation_config is not None:
            args += ["--federation-config", federation_config]
        run_id: int | None = None
        with log.open("w") as handle:
            proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=self.env(self.flwr_home),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            self._procs["flwr-run"] = proc
            self.records["flwr-run"] = ProcessRecord(name="flwr-run", pid=proc.pid, log=log)
            found: list[int] = []
            reader = threading.Thread(
                target=self._copy_stream, args=(proc.stdout, handle, found), daemon=True
            )
            reader.start()
            try:
                exit_code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                exit_code = None
                self._stop_processes(["flwr-run"])
            reader.join(timeout=5)
            run_id = found[0] if found else None
        return run_id, exit_code

    def _copy_stream(self, stream: IO[str] | None, handle: IO[str], found: list[int]) -> None:
        if stream is None:
            return
        for line in stream:
            handle.write(line)
            handle.flush()
            if not found and (match := _RUN_ID_LINE.search(line)):
                found.append(int(match.group(1)))
            if self.echo and not any(text in line for text in self.hidden_lines):
                sys.stdout.write(line)
                sys.stdout.flush()

    def run_status(self, run_id: int | None) -> dict[str, Any]:
        """The run's entry of ``flwr ls fedkd-local --format json`` (the latest run if no id)."""
        args = ["ls", CONNECTION, "--format", "json"]
        if run_id is not None:
            args[2:2] = ["--run-id", str(run_id)]
        proc = self.flwr(*args)
        runs = _json_object(proc.stdout).get("runs")
        if proc.returncode != 0 or not isinstance(runs, list) or not runs:
            raise DeployError(
                f"flwr ls failed (rc={proc.returncode}): {(proc.stdout + proc.stderr)[-1000:]}"
            )
        if run_id is not None:
            runs = [r for r in runs if str(r.get("run-id")) == str(run_id)] or runs
        return dict(runs[-1])

    def wait_finished(self, run_id: int | None, *, timeout: float) -> dict[str, Any]:
        """Poll :meth:`run_status` until the status starts with ``finished``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.run_status(run_id)
            if str(status.get("status", "")).startswith("finished") or time.monotonic() > deadline:
                return status
            time.sleep(1.0)

    # -- shutdown

    def _stop_processes(self, names: Sequence[str]) -> None:
        """SIGTERM every live process in ``names``, SIGKILL what is left after the grace."""
        live = [n for n in names if self._procs[n].poll() is None]
        for name in names:
            record = self.records[name]
            record.exited_by_itself = name not in live
        for name in live:
            with contextlib.suppress(ProcessLookupError):
                self._procs[name].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name in live:
            try:
                self._procs[name].wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (pid %s) ignored SIGTERM; killing it", name, self._procs[name].pid
                )
                with contextlib.suppress(ProcessLookupError):
                    self._procs[name].kill()
                self._procs[name].wait()
        for name in names:
            self.records[name].exit_code = self._procs[name].returncode

    def stop_all(self) -> list[int]:
        """Stop everything this federation started; returns pids still alive (should be none).

        SuperNodes first, then the SuperLink. Then the children each left in its process
        group (``flower-superexec``) get time to exit by themselves, and a SIGKILL if not.
        Last, every descendant seen before the first signal (the ``flwr-serverapp`` of a
        running run starts in a session of its own) gets SIGTERM, then SIGKILL, by pid.
        """
        names = sorted(self._procs, key=lambda n: n == "superlink")
        live = [self._procs[n].pid for n in names if self._procs[n].poll() is None]
        seen = descendants(live)
        self._stop_processes(names)
        groups = [self._procs[n].pid for n in names]  # start_new_session: pgid == pid
        deadline = time.monotonic() + CHILD_EXIT_SECONDS
        while any(group_members(g) for g in groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pgid in groups:
            if group_members(pgid):
                logger.warning("children of pid %s still running; killing its process group", pgid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        stop_pids(seen)
        time.sleep(0.1)
        left = [pid for pid, start in seen if start_time(pid) == start]
        return (
            [pid for pid in self.started_pids if alive(pid)]
            + left
            + [pid for g in groups for pid in group_members(g)]
        )

    def __exit__(self, *exc_info: object) -> None:
        with _signals_ignored():  # a second Ctrl-C must not cut the shutdown short
            still_alive = self.stop_all()
        if still_alive:
            logger.error("processes still alive after shutdown: %s", still_alive)


def _json_object(text: str) -> dict[str, Any]:
    """The JSON object in a CLI's output (it may be preceded by notices)."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into :class:`DeployInterrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise DeployInterrupted(signal.Signals(signum).name, signum=signum)

    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for the (bounded) shutdown; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)
