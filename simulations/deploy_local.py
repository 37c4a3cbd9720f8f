"""``python -m simulations.deploy_local [overrides]``: a real Flower deployment on 127.0.0.1.

One command runs what docs/DEPLOYMENT.md describes for real machines, on loopback: a
throwaway CA and server certificate (``openssl``), one SSH key pair per SuperNode
(``ssh-keygen``), a ``flower-superlink`` with TLS and SuperNode authentication, the public
keys registered with ``flwr supernode register``, N ``flower-supernode`` processes, and one
run submitted with ``flwr run``. The real outcome comes from ``flwr ls --format json`` and
the run directory's ``summary.json`` (``flwr run --stream`` exits 0 even when the ServerApp
failed). Every process it started is stopped by pid at the end, also on error or Ctrl-C.

Arguments are the Hydra overrides of ``python -m simulations.run`` plus launcher options
written as ``deploy.<key>=<value>``, which are taken out before the config is composed:

==================  ==========================================================================
``deploy.nodes``    number of SuperNodes; must equal ``num_clients`` (default: ``num_clients``
                    when given, else 3, and ``num_clients`` is then set to it)
``deploy.port``     the SuperLink's one HTTPS port (default: a free port)
``deploy.out_dir``  the run directory (default ``outputs/deploy-<timestamp>``)
``deploy.timeout``  seconds for the whole deployment (default 600)
``deploy.workdir``  certificates, keys, logs and ``FLWR_HOME`` (default: a temporary
                    directory, removed after a completed run, kept and printed otherwise)
``deploy.certs_dir`` a directory with ``ca.crt``, ``server.crt`` and ``server.key`` to use
                    instead of generating a throwaway CA
``deploy.data_files`` ``true``: every SuperNode gets its own data file (default ``false``)
==================  ==========================================================================

Every SuperNode gets ``partition-id=i num-partitions=N`` as its node config, so each
ClientApp rebuilds its own partition exactly as under ``flwr run``'s simulation. With
``deploy.data_files=true`` the launcher writes each partition to ``<workdir>/data/node-i.npz``
and adds ``data-file="..."`` to that node's config: the client then trains on the file, as a
real client with its own records does (``fedkd.data.local_files``; same numbers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from hydra.errors import HydraException

from fedkd.errors import ConfigError, FedKDError
from fedkd.results import check_fresh_run_dir

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "fedkd-local"
DEPLOY_PREFIX = "deploy."
DEFAULT_NODES = 3
DEFAULT_TIMEOUT_SECONDS = 600.0
CERT_FILES = ("ca.crt", "server.crt", "server.key")
STARTUP_TIMEOUT_SECONDS = 60.0  # SuperLink listening / SuperNode connected (both take ~1 s)
STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL
CHILD_EXIT_SECONDS = 15.0  # a superexec notices its parent is gone within ~1-10 s

_OPTION_KEYS = ("nodes", "port", "out_dir", "timeout", "workdir", "certs_dir", "data_files")
_NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")
_RUN_ID_LINE = re.compile(r"Successfully started run (\d+)")


class DeployError(FedKDError, RuntimeError):
    """The local deployment could not be set up or run; the message says which step."""


class DeployInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: unwind through ``finally`` so every process is stopped."""


@dataclass(frozen=True)
class DeployOptions:
    """The ``deploy.*`` launcher options (see the module docstring)."""

    nodes: int | None = None
    port: int | None = None
    out_dir: Path | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    workdir: Path | None = None
    certs_dir: Path | None = None
    data_files: bool = False


@dataclass(frozen=True)
class Credentials:
    """The SuperLink's TLS files: the CA that SuperNodes and the CLI trust, and the server pair."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's SSH key pair (ECDSA P-384, OpenSSH format)."""

    private_key: Path
    public_key: Path


@dataclass
class ProcessRecord:
    """A process the launcher started, and how it ended."""

    name: str
    pid: int
    log: Path
    exit_code: int | None = None
    exited_by_itself: bool | None = None  # False: the launcher had to stop it


@dataclass
class DeployResult:
    """What one deployment produced.

    ``status`` is Flower's final run status without the ``finished:`` prefix
    (``completed``, ``failed``, ``stopped``), or ``timeout``; ``summary`` is the run
    directory's ``summary.json`` (``None`` when the ServerApp never wrote one).
    """

    status: str
    run_id: int | None
    run_dir: Path
    summary: dict[str, Any] | None
    node_ids: list[int]
    logs_dir: Path
    workdir: Path
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


# --------------------------------------------------------------------------- arguments


def split_arguments(argv: Sequence[str]) -> tuple[list[str], DeployOptions]:
    """Separate ``deploy.<key>=<value>`` launcher options from the Hydra overrides."""
    overrides: list[str] = []
    values: dict[str, str] = {}
    for arg in argv:
        if not arg.startswith(DEPLOY_PREFIX):
            overrides.append(arg)
            continue
        key, sep, value = arg[len(DEPLOY_PREFIX) :].partition("=")
        if not sep or key not in _OPTION_KEYS:
            raise ConfigError(
                f"launcher option {arg!r}: expected deploy.<key>=<value> with key one of "
                f"{', '.join(_OPTION_KEYS)}"
            )
        values[key] = value
    return overrides, DeployOptions(
        nodes=_int_option(values, "nodes", minimum=1),
        port=_int_option(values, "port", minimum=1, maximum=65535),
        out_dir=_path_option(values, "out_dir"),
        timeout_seconds=_float_option(values, "timeout", DEFAULT_TIMEOUT_SECONDS),
        workdir=_path_option(values, "workdir"),
        certs_dir=_path_option(values, "certs_dir"),
        data_files=_bool_option(values, "data_files"),
    )


def _bool_option(values: dict[str, str], key: str) -> bool:
    raw = values.get(key, "false").strip().lower()
    if raw not in ("true", "false"):
        raise ConfigError(f"deploy.{key} must be true or false, got {values[key]!r}")
    return raw == "true"


def _int_option(
    values: dict[str, str], key: str, *, minimum: int, maximum: int | None = None
) -> int | None:
    if key not in values:
        return None
    try:
        number = int(values[key])
    except ValueError:
        raise ConfigError(f"deploy.{key} must be an integer, got {values[key]!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(f"deploy.{key} must be {bound}, got {number}")
    return number


def _float_option(values: dict[str, str], key: str, default: float) -> float:
    if key not in values:
        return default
    try:
        number = float(values[key])
    except ValueError:
        raise ConfigError(
            f"deploy.{key} must be a number of seconds, got {values[key]!r}"
        ) from None
    if number <= 0:
        raise ConfigError(f"deploy.{key} must be > 0, got {number}")
    return number


def _path_option(values: dict[str, str], key: str) -> Path | None:
    if key not in values:
        return None
    if not values[key]:
        raise ConfigError(f"deploy.{key} must not be empty")
    return Path(values[key]).expanduser().resolve()


def settle_num_clients(overrides: Sequence[str], nodes: int | None) -> tuple[list[str], int]:
    """Make ``num_clients`` and the number of SuperNodes agree; returns (overrides, nodes).

    An explicit ``num_clients=K`` sets the default number of nodes; without it the launcher
    adds ``num_clients=<nodes>`` (default 3). Both given and different is an error.
    """
    given = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "num_clients"]
    if not given:
        count = DEFAULT_NODES if nodes is None else nodes
        return [*overrides, f"num_clients={count}"], count
    try:
        num_clients = int(given[-1].split("=", 1)[1])
    except (IndexError, ValueError):
        raise ConfigError(f"num_clients must be an integer, got {given[-1]!r}") from None
    if nodes is not None and nodes != num_clients:
        raise ConfigError(
            f"deploy.nodes={nodes} must equal num_clients={num_clients}: every client is "
            "one SuperNode"
        )
    return list(overrides), num_clients


def validate_config(overrides: Sequence[str]) -> dict[str, Any]:
    """Compose the config and build the run once, so bad input fails before any process starts."""
    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config

    try:
        cfg = compose_config(list(overrides))
        prepare_run(cfg)
    except HydraException as exc:  # unknown group option or key, unparsable override
        raise ConfigError(str(exc).splitlines()[0]) from exc
    return cfg


def run_config_argument(overrides: Sequence[str], out_dir: Path, *, spill_dir: Path) -> str:
    """The value of ``flwr run --run-config``: ``'overrides="..." out-dir="/abs"'``.

    Flower splits the inline pairs with a regex that ends a quoted value at its first
    matching quote and cannot unescape, so a value is put in ``"..."``, else in a literal
    ``'...'``; one that holds both quotes (or a backslash and a single quote) goes into
    ``<spill_dir>/run-config.toml`` instead, whose path is then the argument.
    """
    values = {
        "overrides": shlex.join(overrides),  # the ServerApp splits it with shlex
        "out-dir": str(out_dir),
    }
    inline = [_inline_toml_string(value) for value in values.values()]
    if all(quoted is not None for quoted in inline):
        return " ".join(f"{key}={quoted}" for key, quoted in zip(values, inline, strict=True))
    spill_dir.mkdir(parents=True, exist_ok=True)
    path = spill_dir / "run-config.toml"
    # A JSON string without ASCII escaping is a valid TOML basic string.
    path.write_text(
        "".join(
            f"{key} = {json.dumps(value, ensure_ascii=False)}\n" for key, value in values.items()
        )
    )
    return str(path)


def _inline_toml_string(value: str) -> str | None:
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return None


# ------------------------------------------------------------------ certificates and keys


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DeployError(f"'{name}' not found on PATH; install it (it is needed for {_WHY[name]})")
    return path


_WHY = {
    "openssl": "the throwaway CA and server certificate; or pass deploy.certs_dir=<dir>",
    "ssh-keygen": "the SuperNodes' authentication keys",
}


def _run_tool(args: list[str], *, what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DeployError(
            f"{what} failed ({' '.join(args[:2])}, rc={proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-1000:]}"
        )


def make_certificates(directory: Path) -> Credentials:
    """A throwaway CA and a server certificate for ``localhost`` / ``127.0.0.1`` it signs."""
    openssl = _require_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    server_key, server_csr = directory / "server.key", directory / "server.csr"
    server_cert, extensions = directory / "server.crt", directory / "server.ext"
    _run_tool(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(ca_key), "-out", str(ca_cert), "-subj", "/CN=fedkd-local-ca",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        what="creating the CA",
    )  # fmt: skip
    _run_tool(
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(server_key),
         "-out", str(server_csr), "-subj", "/CN=localhost"],
        what="creating the server key",
    )  # fmt: skip
    extensions.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _run_tool(
        [openssl, "x509", "-req", "-in", str(server_csr), "-CA", str(ca_cert),
         "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2", "-sha256",
         "-out", str(server_cert), "-extfile", str(extensions)],
        what="signing the server certificate",
    )  # fmt: skip
    return Credentials(ca_cert=ca_cert, server_cert=server_cert, server_key=server_key)


def load_certificates(directory: Path) -> Credentials:
    """Use existing ``ca.crt``, ``server.crt`` and ``server.key`` from ``deploy.certs_dir``."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise DeployError(f"deploy.certs_dir {directory} is not a directory")
    missing = [name for name in CERT_FILES if not (directory / name).is_file()]
    if missing:
        raise DeployError(
            f"deploy.certs_dir {directory} lacks {', '.join(missing)} "
            f"(needs {', '.join(CERT_FILES)})"
        )
    return Credentials(*(directory / name for name in CERT_FILES))


def make_node_key(directory: Path, name: str) -> NodeKey:
    """An ECDSA P-384 key pair in OpenSSH format, the kind SuperNode auth accepts."""
    ssh_keygen = _require_tool("ssh-keygen")
    directory.mkdir(parents=True, exist_ok=True)
    private_key = directory / name
    for path in (private_key, private_key.with_suffix(".pub")):
        path.unlink(missing_ok=True)  # ssh-keygen asks before overwriting
    _run_tool(
        [ssh_keygen, "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", name,
         "-f", str(private_key)],
        what=f"creating the key of {name}",
    )  # fmt: skip
    return NodeKey(private_key=private_key, public_key=Path(f"{private_key}.pub"))


def write_cli_config(flwr_home: Path, *, port: int, ca_cert: Path) -> Path:
    """``$FLWR_HOME/config.toml`` with the ``fedkd-local`` connection as the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "127.0.0.1:{port}"\n'
        f"root-certificates = {json.dumps(str(ca_cert.resolve()))}\n"
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


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (zombies only wait to be reaped)."""
    if Path("/proc").is_dir():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (Linux ``/proc``; empty elsewhere)."""
    members: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return members
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class LocalFederation(contextlib.AbstractContextManager["LocalFederation"]):
    """Owns the SuperLink, the SuperNodes and the CLI calls of one loopback deployment.

    Every process is started in its own session (so a terminal's Ctrl-C reaches only the
    launcher, which then stops them in order) and is stopped by pid on exit: SIGTERM,
    SIGKILL after a grace period, then the children each one left in its process group
    (``flower-superexec`` exits by itself once its parent is gone).

    Parameters
    ----------
    workdir : Path
        Certificates, keys, logs (``logs/``) and the ``FLWR_HOME`` directories go here.
    port : int
        The SuperLink's HTTPS port on 127.0.0.1.
    credentials : Credentials
        The SuperLink's TLS files; the CLI and the SuperNodes trust ``ca_cert``.
    echo : bool, default False
        Also print ``flwr run --stream``'s output (it always goes to ``logs/flwr-run.log``).
    """

    def __init__(
        self, workdir: Path, *, port: int, credentials: Credentials, echo: bool = False
    ) -> None:
        self.workdir = workdir.resolve()
        self.port = port
        self.credentials = credentials
        self.echo = echo
        self.logs_dir = self.workdir / "logs"
        self.keys_dir = self.workdir / "keys"
        self.flwr_home = self.workdir / "flwr-home"  # the CLI's and the SuperLink's
        self.bin_dir = Path(sys.executable).parent  # flwr starts its helpers by bare name
        self.records: dict[str, ProcessRecord] = {}
        self._procs: dict[str, subprocess.Popen[Any]] = {}
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        write_cli_config(self.flwr_home, port=port, ca_cert=credentials.ca_cert)

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

    # -- SuperLink

    def start_superlink(self, *, timeout: float = STARTUP_TIMEOUT_SECONDS) -> ProcessRecord:
        """Start ``flower-superlink`` with TLS and SuperNode auth; return once it listens."""
        check_port_free(self.port)
        creds = self.credentials
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
        deadline = time.monotonic() + timeout
        proc = self._procs["superlink"]
        while not _accepts_connections(self.port):
            if proc.poll() is not None:
                raise DeployError(
                    f"flower-superlink exited with code {proc.returncode} before listening on "
                    f"port {self.port}; log {record.log}:\n{_tail(record.log)}"
                )
            if time.monotonic() > deadline:
                raise DeployError(
                    f"flower-superlink did not listen on 127.0.0.1:{self.port} within "
                    f"{timeout:.0f} s; log {record.log}"
                )
            time.sleep(0.2)
        return record

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
                "--root-certificates", str(self.credentials.ca_cert),
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
        record, proc = self.records[name], self._procs[name]
        deadline = time.monotonic() + timeout
        while True:
            match = _NODE_ID_LINE.search(_tail(record.log, 20_000))
            if match:
                return int(match.group(1))
            if proc.poll() is not None:
                raise DeployError(
                    f"{name} exited with code {proc.returncode} before connecting; "
                    f"log {record.log}:\n{_tail(record.log)}"
                )
            if time.monotonic() > deadline:
                raise DeployError(
                    f"{name} did not connect within {timeout:.0f} s; log {record.log}"
                )
            time.sleep(0.2)

    def wait_exit(self, name: str, *, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for a process to exit by itself; its exit code."""
        try:
            return self._procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- runs

    def submit(
        self, app_dir: Path, run_config: str, *, timeout: float
    ) -> tuple[int | None, int | None]:
        """``flwr run <app> fedkd-local --run-config ... --stream``; (run id, exit code).

        The exit code is ``None`` when the stream was still open after ``timeout`` seconds
        (the ``flwr`` client is then stopped). It says little: ``--stream`` exits 0 even when
        the ServerApp failed, so use :meth:`run_status`.
        """
        log = self.logs_dir / "flwr-run.log"
        args = [self.tool("flwr"), "run", str(app_dir), CONNECTION,
                "--run-config", run_config, "--stream"]  # fmt: skip
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
            if self.echo:
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
        """
        names = sorted(self._procs, key=lambda n: n == "superlink")
        self._stop_processes(names)
        groups = [self._procs[n].pid for n in names]  # start_new_session: pgid == pid
        deadline = time.monotonic() + CHILD_EXIT_SECONDS
        while any(_group_members(g) for g in groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pgid in groups:
            if _group_members(pgid):
                logger.warning("children of pid %s still running; killing its process group", pgid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.1)
        return [pid for pid in self.started_pids if _alive(pid)] + [
            pid for g in groups for pid in _group_members(g)
        ]

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
        raise DeployInterrupted(signal.Signals(signum).name)

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
    data_files: bool = False,
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
        The run directory; default ``outputs/deploy-<timestamp>``.
    timeout_seconds : float, default 600
        For the whole deployment; an unfinished run ends with status ``timeout``.
    workdir : Path, optional
        Kept afterwards. Default: a temporary directory, removed when the run completed.
    certs_dir : Path, optional
        ``ca.crt``, ``server.crt``, ``server.key`` to use instead of a throwaway CA.
    data_files : bool, default False
        Write each node's partition to its own data file and pass it as ``data-file``.
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
    """
    started = time.monotonic()
    deadline = started + timeout_seconds
    overrides, nodes = settle_num_clients(overrides, nodes)
    cfg = validate_config(overrides)
    if port is not None:
        check_port_free(port)
    run_dir = (out_dir or Path("outputs") / f"deploy-{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    check_fresh_run_dir(run_dir)  # an existing run's results are never overwritten
    if not (REPO_ROOT / "pyproject.toml").is_file():
        raise DeployError(f"no pyproject.toml in {REPO_ROOT}: the Flower app must be a checkout")
    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="fedkd-deploy-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    completed = False
    try:
        run_config = run_config_argument(overrides, run_dir, spill_dir=work)
        credentials = (
            load_certificates(certs_dir)
            if certs_dir is not None
            else make_certificates(work / "certs")
        )
        keys = [make_node_key(work / "keys", f"node-{i}") for i in range(nodes)]
        files = write_node_data(cfg, work / "data") if data_files else {}
        files.update(node_data or {})
        node_configs = [node_config(i, nodes, files.get(i)) for i in range(nodes)]
        federation = LocalFederation(
            work, port=free_port() if port is None else port, credentials=credentials, echo=echo
        )
        with _signals_raise(), federation:
            result = _run_federation(
                federation,
                keys,
                node_configs,
                run_config,
                run_dir,
                deadline=deadline,
                on_ready=on_ready,
            )
        result.processes = list(federation.records.values())
        still_alive = [r.pid for r in result.processes if _alive(r.pid)]
        if still_alive:
            raise DeployError(f"processes still alive after shutdown: {still_alive}")
        result.wall_seconds = time.monotonic() - started
        completed = result.ok
        return result
    finally:
        if temporary and completed:
            shutil.rmtree(work, ignore_errors=True)
        elif temporary:
            print(f"fedkd deploy: kept the work directory {work} (logs in {work / 'logs'})",
                  file=sys.stderr)  # fmt: skip


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


def _print_summary(result: DeployResult) -> None:
    summary = result.summary or {}
    final = summary.get("final", {}) if isinstance(summary.get("final"), dict) else {}
    accuracy = final.get("student_accuracy")
    lines = [
        f"fedkd deploy: run {result.run_id} {result.status}"
        + (f" ({result.status_details})" if result.status_details and not result.ok else ""),
        f"  nodes          {len(result.node_ids)} SuperNodes (ids {result.node_ids})",
        f"  run directory  {result.run_dir}",
        f"  summary        {summary.get('status', 'missing')}, "
        f"{summary.get('rounds_completed', '?')} rounds",
        "  student acc.   " + (f"{accuracy:.1%}" if isinstance(accuracy, int | float) else "n/a"),
        f"  wall time      {result.wall_seconds:.1f} s",
    ]
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 only for a completed run)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides, options = split_arguments(sys.argv[1:] if argv is None else argv)
        result = deploy(
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
    except ConfigError as exc:
        print(f"fedkd deploy: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"fedkd deploy: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # DeployInterrupted, or Ctrl-C before it was armed
        print(f"fedkd deploy: interrupted ({exc}); every started process was stopped",
              file=sys.stderr)  # fmt: skip
        return 130
    _print_summary(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
