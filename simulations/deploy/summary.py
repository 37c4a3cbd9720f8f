"""``summary.json`` on every exit of a local deployment, also when the ServerApp wrote none.

The ServerApp runs under the SuperLink and writes ``summary.json`` when it ends by itself.
Stopped from outside (Ctrl-C, SIGTERM, ``deploy.timeout``, a launcher error), it is killed
with the SuperLink and may leave ``metrics.jsonl`` alone; the launcher then builds the
summary from ``metrics.jsonl`` with the project's own writer
(:func:`fedkd.run.results.summarize`, :meth:`fedkd.run.results.RunWriter.finish`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedkd.run.results import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunWriter,
    read_metrics,
    summarize,
)

logger = logging.getLogger("simulations.deploy_local")


@dataclass(frozen=True)
class StudentSize:
    """The student's size, for a summary the launcher writes (the ServerApp's has it too)."""

    parameters: int
    size_bytes: int


def settle_summary(
    run_dir: Path,
    config: Mapping[str, Any],
    student: StudentSize,
    *,
    status: str,
    error: str | None,
    wall_seconds: float,
) -> dict[str, Any]:
    """Make sure ``run_dir`` has a ``summary.json`` saying how the deployment ended.

    ``status`` is the launcher's view: ``completed`` (Flower finished the run; then the
    ServerApp's summary stands, and its absence is a failure), ``interrupted`` (SIGINT or
    SIGTERM) or ``failed`` (``deploy.timeout``, a launcher error). A ServerApp summary that
    says ``completed`` is kept as it is; any other is overridden by the launcher's status
    (its own ``status`` and ``error`` move to ``serverapp_status`` / ``serverapp_error``).
    Without one, the summary is built from ``metrics.jsonl`` (its finished rounds) and the
    run's ``config.yaml`` (``config`` when the ServerApp never wrote one). Returns it.
    """
    path = run_dir / SUMMARY_FILE
    existing = _read_json(path)
    if existing is not None and (existing.get("status") == "completed" or status == "completed"):
        return existing
    if existing is None and status == "completed":
        status, error = "failed", "the ServerApp ended without writing summary.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(run_dir) if (run_dir / METRICS_FILE).is_file() else []
    if existing is not None:
        summary = dict(existing)
        summary["serverapp_status"] = summary.get("status")
        if "error" in summary:
            summary["serverapp_error"] = summary["error"]
        summary["status"] = status
        summary["error"] = error
    else:
        saved = _read_yaml(run_dir / CONFIG_FILE)
        summary = summarize(
            rows,
            config=saved if saved is not None else config,
            wall_seconds=wall_seconds,
            student_parameters=student.parameters,
            student_size_bytes=student.size_bytes,
            status=status,
            error=error,
        )
        summary["written_by"] = "deploy_local"  # the ServerApp did not get to write it
    writer = RunWriter(run_dir)
    writer.rows = rows
    written = writer.finish(summary)
    rounds = sum(1 for row in rows if int(row.get("round", 0)) >= 1)
    logger.info("summary.json (%s, %s rounds) in %s", written["status"], rounds, run_dir)
    return written


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None
