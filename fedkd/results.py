"""The run directory: config.yaml, metrics.jsonl, summary.json and plots."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ACCURACY_PLOT = "accuracy.png"
BYTES_PLOT = "bytes.png"
RESULT_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)


class RunWriter:
    """Writes one run's results as they arrive, so a crash never loses finished rounds.

    ``metrics.jsonl`` gets one line per round, flushed at once; ``summary.json`` is written
    atomically (temporary file, then rename) at the end, also when the run failed.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []

    def start(self, config: Mapping[str, Any]) -> None:
        """Create the directory, write ``config.yaml`` and start an empty ``metrics.jsonl``.

        Raises
        ------
        ConfigError
            The directory already holds a run's results: they are never overwritten.
        """
        check_fresh_run_dir(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config(config)
        (self.run_dir / METRICS_FILE).write_text("")
        self.rows = []

    def resume(self, config: Mapping[str, Any], *, last_round: int) -> None:
        """Continue an existing run after ``last_round`` (its checkpoint): rows of later
        rounds, written after the checkpoint, are dropped (they will be run again)."""
        rows = [r for r in read_metrics(self.run_dir) if int(r.get("round", 0)) <= last_round]
        self._write_config(config)
        tmp = self.run_dir / (METRICS_FILE + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.run_dir / METRICS_FILE)
        (self.run_dir / SUMMARY_FILE).unlink(missing_ok=True)
        self.rows = rows

    def _write_config(self, config: Mapping[str, Any]) -> None:
        with (self.run_dir / CONFIG_FILE).open("w") as handle:
            yaml.safe_dump(_jsonable(dict(config)), handle, sort_keys=False)

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one round's metrics."""
        clean = _jsonable(dict(row))
        self.rows.append(clean)
        with (self.run_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(clean) + "\n")

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` (atomically) and the plots."""
        _atomic_write_json(self.run_dir / SUMMARY_FILE, _jsonable(dict(summary)))
        try:
            write_plots(self.rows, self.run_dir)
        except Exception:  # a plotting failure must not lose the numbers above
            logger.exception("could not write plots into %s", self.run_dir)


def check_fresh_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that already holds a run's results (never overwrite them)."""
    existing = [name for name in RESULT_FILES if (Path(run_dir) / name).exists()]
    if existing:
        raise ConfigError(
            f"run directory {run_dir} already holds a run ({', '.join(existing)}); results are "
            f"never overwritten: pick another hydra.run.dir (or out-dir), or continue that "
            f"run with resume={run_dir}"
        )


def summarize(
    rows: Sequence[Mapping[str, Any]],
    *,
    config: Mapping[str, Any],
    wall_seconds: float,
    student_parameters: int,
    student_size_bytes: int,
    status: str = "completed",
    error: str | None = None,
) -> dict[str, Any]:
    """Build ``summary.json`` from the per-round rows (round 0 is the initial evaluation)."""
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    final = dict(rounds[-1]) if rounds else {}
    best: dict[str, Any] = {}
    for key in ("student_accuracy", "ensemble_accuracy", "client_accuracy"):
        values = [(r[key], r["round"]) for r in rounds if isinstance(r.get(key), int | float)]
        if values:
            value, at_round = max(values, key=lambda v: (v[0], -v[1]))
            best[key] = {"value": value, "round": at_round}
    summary: dict[str, Any] = {
        "status": status,
        "strategy": config["strategy"]["name"],
        "dataset": config["dataset"]["name"],
        "partition": config["partition"]["name"],
        "model": config["model"]["name"],
        "student": config["student"]["name"],
        "num_clients": config["num_clients"],
        "num_rounds": config["num_rounds"],
        "rounds_completed": len(rounds),
        "seed": config["seed"],
        "final": final,
        "best": best,
        "communication": {
            "uplink_bytes": sum(int(r.get("uplink_bytes", 0)) for r in rounds),
            "downlink_bytes": sum(int(r.get("downlink_bytes", 0)) for r in rounds),
        },
        "wall_seconds": wall_seconds,
        "environment": environment(),
        "parameters": student_parameters,
        "size_bytes": student_size_bytes,
    }
    if error is not None:
        summary["error"] = error
    return summary


def environment() -> dict[str, Any]:
    """Where the ServerApp ran and with what: host, process id, Python, torch and Flower."""
    import platform
    import socket
    from importlib.metadata import version

    import torch

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": version("flwr"),
    }


def write_plots(rows: Sequence[Mapping[str, Any]], run_dir: Path) -> list[Path]:
    """Accuracy per round (student, ensemble, clients) and bytes per round, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("student_accuracy", "student"),
        ("ensemble_accuracy", "teacher ensemble"),
        ("client_accuracy", "clients (local test)"),
    ):
        points = [(r["round"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(run_dir / ACCURACY_PLOT, dpi=100)
    plt.close(fig)
    written.append(run_dir / ACCURACY_PLOT)

    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    for key, label in (("uplink_bytes", "uplink"), ("downlink_bytes", "downlink")):
        points = [(r["round"], r.get(key, 0) / 1e6) for r in rounds]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("MB per round")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / BYTES_PLOT, dpi=100)
    plt.close(fig)
    written.append(run_dir / BYTES_PLOT)
    return written


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` back."""
    with (Path(run_dir) / METRICS_FILE).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _atomic_write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as handle:
        json.dump(value, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN/inf become None (JSON has no such numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)
