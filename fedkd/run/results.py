"""The run directory: config.yaml, metrics.jsonl, summary.json, partitions.json, the report."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedkd.config import strategy_class
from fedkd.errors import ConfigError
from fedkd.run import names
from fedkd.run.provenance import provenance
from fedkd.run.report import ACCURACY_PLOT as ACCURACY_PLOT
from fedkd.run.report import BYTES_PLOT as BYTES_PLOT
from fedkd.run.report import REPORT_HTML as REPORT_HTML
from fedkd.run.report import ReportSpec, write_report
from fedkd.run.report import write_plots as write_plots
from fedkd.run.timing import seconds_since_start
from fedkd.run.trackers import Trackers, TrackerSpec

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PARTITIONS_FILE = "partitions.json"
RESULT_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)
#: ``summary.json``'s ``status``: every round ran; a privacy budget or too few replies
#: ended the run early (``stopped_reason``); the user stopped it (SIGINT or SIGTERM); an
#: error ended it (``error``). Finished rounds are kept in ``metrics.jsonl`` in every case.
STATUSES = ("completed", "stopped", "interrupted", "failed")
#: Row keys whose best value and round ``summary.json`` keeps (``best``), by their names
#: (:mod:`fedkd.run.names`) and, for one release, their fedkd 0.1 aliases; binary tasks add
#: the global model's balanced accuracy and ROC-AUC.
_BEST = (
    names.GLOBAL_TEST,
    "global_on_global_test_balanced_accuracy",
    "global_on_global_test_auc",
    names.ENSEMBLE_TEST,
    names.GLOBAL_LOCAL_TEST,
    names.GLOBAL_EVALUATED,
    names.LOCAL_EVALUATED,
    names.LOCAL_GLOBAL_TEST,
    names.LOCAL_LOCAL_TEST,
)
BEST_KEYS = (
    *(key for new in _BEST for key in (new, names.ALIASES.get(new)) if key is not None),
    names.EVALUATED_ALIAS,
)
#: The metrics a method's paper may report first (``headline`` in ``summary.json``).
HEADLINE_LABELS = {
    names.GLOBAL_TEST: names.LABELS[names.GLOBAL_TEST],
    names.LOCAL_GLOBAL_TEST: names.LABELS[names.LOCAL_GLOBAL_TEST],
}


def headline_metric(config: Mapping[str, Any]) -> str:
    """The metric the run's method reports first: its class's ``headline_metric`` (the
    clients' own models on the global test set for FedMD, DS-FL, FD, FedProto and local-only;
    else the global model), by its name in :mod:`fedkd.run.names`."""
    try:
        cls = strategy_class(config["strategy"])
    except (ConfigError, KeyError, TypeError):
        return names.GLOBAL_TEST
    metric = names.new_name(getattr(cls, "headline_metric", names.GLOBAL_TEST))
    return metric if metric in HEADLINE_LABELS else names.GLOBAL_TEST


class RunWriter:
    """Writes one run's results as they arrive, so a crash never loses finished rounds.

    ``metrics.jsonl`` gets one line per round, flushed at once; ``summary.json`` is written
    atomically (temporary file, then rename) at the end, also when the run failed, and only
    then the report (plots, ``report.html``), which can never lose the numbers. The
    experiment trackers (:mod:`fedkd.run.trackers`) get the config at the start, each row as
    it is written, and the summary and files once the report is on disk.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    report : ReportSpec | None
        The ``report`` block (default: plots and ``report.html``).
    trackers : TrackerSpec | None
        The ``tracker`` key and ``trackers`` block (default: none); ``report.tensorboard``
        adds ``tensorboard``.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        report: ReportSpec | None = None,
        trackers: TrackerSpec | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.report = report or ReportSpec()
        self.rows: list[dict[str, Any]] = []
        spec = trackers or TrackerSpec()
        self.trackers = Trackers(spec.with_tensorboard() if self.report.tensorboard else spec)

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
        self.trackers.start(_jsonable(dict(config)), self.run_dir)

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
        self.trackers.start(
            _jsonable(dict(config)), self.run_dir, resume_from_round=last_round, kept_rows=rows
        )

    def _write_config(self, config: Mapping[str, Any]) -> None:
        with (self.run_dir / CONFIG_FILE).open("w") as handle:
            yaml.safe_dump(_jsonable(dict(config)), handle, sort_keys=False)

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one round's metrics."""
        clean = _jsonable(dict(row))
        self.rows.append(clean)
        with (self.run_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(clean) + "\n")
        self.trackers.log_round(clean)  # a tracker that fails is switched off, never raises

    def finish(
        self,
        summary: Mapping[str, Any],
        *,
        label_histograms: Mapping[int, Sequence[int]] | None = None,
    ) -> dict[str, Any]:
        """Write ``summary.json`` (atomically), ``partitions.json`` and then the report.

        ``label_histograms`` are the label counts of each client's training split by
        partition id (``partitions.json``; nothing is written without them). What the report
        could not draw is logged and recorded as ``report_error`` in ``summary.json``,
        which is then rewritten. Then the trackers get the summary and the files written
        (results and report), and end. Returns the summary as written.
        """
        written = _jsonable(dict(summary))
        _atomic_write_json(self.run_dir / SUMMARY_FILE, written)
        histograms = {int(p): [int(c) for c in h] for p, h in (label_histograms or {}).items()}
        if histograms:
            _atomic_write_text(self.run_dir / PARTITIONS_FILE, _partitions_json(histograms))
        report_files: list[Path] = []
        try:
            report = write_report(
                self.run_dir,
                self.rows,
                written,
                label_histograms=histograms,
                spec=self.report,
            )
            errors, report_files = report.errors, report.files
        except Exception as exc:  # a report failure must not lose the numbers above
            logger.exception("could not write the report into %s", self.run_dir)
            errors = [f"{type(exc).__name__}: {exc}"]
        if errors:
            written["report_error"] = "; ".join(errors)
            _atomic_write_json(self.run_dir / SUMMARY_FILE, written)
        results = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, PARTITIONS_FILE)
        files = [self.run_dir / n for n in results if (self.run_dir / n).is_file()]
        self.trackers.finish(written, files=[*files, *report_files])
        return written


def failure_status(exc: BaseException) -> str:
    """``summary.json``'s status for a run that ``exc`` ended: ``interrupted`` when the user
    stopped it (``KeyboardInterrupt``, including :class:`fedkd.run.interrupt.RunInterrupted`
    for SIGTERM), else ``failed``."""
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


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
    majority_baseline: Mapping[str, Any] | None = None,
    timing: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Build ``summary.json`` from the per-round rows (round 0 is the initial evaluation).

    ``majority_baseline`` (:func:`fedkd.metrics.majority_baseline`) is written after
    ``best`` when given; ``timing`` (``startup_seconds``, ``rounds_seconds``,
    ``outputs_seconds``: :mod:`fedkd.run.timing`) after ``wall_seconds``.
    """
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    final = dict(rounds[-1]) if rounds else {}
    headline = headline_metric(config)
    best: dict[str, Any] = {}
    for key in BEST_KEYS:
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
        "data_seed": config.get("data_seed"),  # null: the data followed seed
        "headline": {
            "metric": headline,
            "value": final.get(headline),
            "label": HEADLINE_LABELS[headline],
        },
        "final": final,
        "best": best,
        **({"majority_baseline": dict(majority_baseline)} if majority_baseline else {}),
        "communication": {
            "uplink_bytes": sum(int(r.get("uplink_bytes", 0)) for r in rounds),
            "downlink_bytes": sum(int(r.get("downlink_bytes", 0)) for r in rounds),
            **_protocol_bytes(rounds),
        },
        "wall_seconds": wall_seconds,
        **dict(timing or {}),
        "environment": environment(),
        "provenance": provenance(),  # fedkd's version and commit, date, host
        "parameters": student_parameters,
        "size_bytes": student_size_bytes,
    }
    if error is not None:
        summary["error"] = error
    return summary


def _protocol_bytes(rounds: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Secure aggregation's own messages (keys, shares, unmasking; issue 22), summed over
    the rounds, when the run used it (nothing otherwise)."""
    keys = ("secagg_uplink_bytes", "secagg_downlink_bytes")
    if not any(key in r for r in rounds for key in keys):
        return {}
    return {key: sum(int(r.get(key, 0)) for r in rounds) for key in keys}


def record_outputs_seconds(
    run_dir: Path, summary: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Set ``summary.json``'s ``outputs_seconds`` to the time since the rounds ended, now
    (:mod:`fedkd.run.timing`): the run's start plus its ``startup_seconds`` and
    ``rounds_seconds`` is when the last round ended. The server calls it once the report is
    written, and ``simulations.run`` again once the engine has shut down. ``summary`` is the
    file's content (read when not given); returns it as written. A summary without those
    keys is returned unchanged."""
    written = dict(summary) if summary is not None else read_summary(run_dir)
    startup, rounds = written.get("startup_seconds"), written.get("rounds_seconds")
    if not isinstance(startup, int | float) or not isinstance(rounds, int | float):
        return written
    written["outputs_seconds"] = max(0.0, seconds_since_start() - startup - rounds)
    _atomic_write_json(Path(run_dir) / SUMMARY_FILE, written)
    return written


def read_summary(run_dir: Path) -> dict[str, Any]:
    """Read ``summary.json`` back."""
    summary: dict[str, Any] = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
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


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` back."""
    with (Path(run_dir) / METRICS_FILE).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _atomic_write_json(path: Path, value: Any) -> None:
    _atomic_write_text(path, json.dumps(value, indent=2))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _partitions_json(histograms: Mapping[int, Sequence[int]]) -> str:
    """``partitions.json`` with one line per partition (readable for 100 clients too)."""
    lines = [f'    "{p}": {json.dumps(list(histograms[p]))}' for p in sorted(histograms)]
    return '{\n  "label_histograms": {\n' + ",\n".join(lines) + "\n  }\n}\n"


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


def read_partitions(run_dir: Path) -> dict[int, list[int]]:
    """The label histograms of ``partitions.json`` by partition id (empty when absent)."""
    path = Path(run_dir) / PARTITIONS_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {int(p): list(h) for p, h in data.get("label_histograms", {}).items()}
