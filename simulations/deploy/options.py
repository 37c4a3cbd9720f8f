"""The ``deploy.*`` launcher options, and the checks on the config before anything starts."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import HydraException

from fedkd.errors import ConfigError
from simulations.deploy.summary import StudentSize

DEPLOY_PREFIX = "deploy."
DEFAULT_NODES = 3
DEFAULT_TIMEOUT_SECONDS = 600.0

_OPTION_KEYS = ("nodes", "port", "out_dir", "timeout", "workdir", "certs_dir", "data_files")


@dataclass(frozen=True)
class DeployOptions:
    """The ``deploy.*`` launcher options (see ``simulations/deploy_local.py``)."""

    nodes: int | None = None
    port: int | None = None
    out_dir: Path | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    workdir: Path | None = None
    certs_dir: Path | None = None
    #: ``True``: each node's partition written to a file; a tuple: the user's own files,
    #: one per node in order.
    data_files: bool | tuple[Path, ...] = False


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
        data_files=_data_files_option(values),
    )


def _data_files_option(values: dict[str, str]) -> bool | tuple[Path, ...]:
    """``deploy.data_files``: ``true``, ``false`` or ``[a.csv,b.csv,...]`` (existing files)."""
    raw = values.get("data_files", "false").strip()
    if not (raw.startswith("[") and raw.endswith("]")):
        if raw.lower() not in ("true", "false"):
            raise ConfigError(
                f"deploy.data_files must be true, false or a list of files [a.csv,b.csv,...], "
                f"got {raw!r}"
            )
        return raw.lower() == "true"
    names = [n.strip().strip("'\"") for n in raw[1:-1].split(",")]
    if not any(names) or not all(names):
        raise ConfigError(f"deploy.data_files: an empty file name in {raw!r}")
    files = tuple(Path(n).expanduser().resolve() for n in names)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"deploy.data_files: no such file: {', '.join(missing)}")
    return files


def check_data_files(data_files: bool | tuple[Path, ...], nodes: int) -> None:
    """A list of data files must name one file per SuperNode."""
    if isinstance(data_files, tuple) and len(data_files) != nodes:
        raise ConfigError(
            f"deploy.data_files names {len(data_files)} files for {nodes} SuperNodes: give "
            "one file per node (num_clients / deploy.nodes)"
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


def validate_config(overrides: Sequence[str]) -> tuple[dict[str, Any], StudentSize]:
    """Compose the config and build the run once, so bad input fails before any process
    starts; returns the config and the student's size (for a summary the launcher writes)."""
    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config
    from fedkd.models import count_parameters, model_size_bytes

    try:
        cfg = compose_config(list(overrides))
        student = prepare_run(cfg).assets.student
    except HydraException as exc:  # unknown group option or key, unparsable override
        raise ConfigError(str(exc).splitlines()[0]) from exc
    return cfg, StudentSize(count_parameters(student), model_size_bytes(student))


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
