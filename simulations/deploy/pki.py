"""The SuperLink's TLS certificates (a throwaway CA, or existing files) and SuperNode keys."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from simulations.deploy.errors import DeployError

CERT_FILES = ("ca.crt", "server.crt", "server.key")


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
