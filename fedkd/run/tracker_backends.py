"""The trackers behind :class:`fedkd.run.trackers.Trackers`: TensorBoard, MLflow, W&B.

Each is a small class with the :class:`~fedkd.run.trackers.Tracker` life cycle; this module
also says what they log (:func:`flatten`, :func:`round_metrics`, :func:`summary_metrics`).
The tracker packages are imported inside the methods, when a tracker starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedkd.run.trackers import MlflowOptions, WandbOptions

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
#: ``summary.json`` statuses of runs that ended as planned (W&B exit code 0).
ENDED_WELL = ("completed", "stopped")
#: MLflow's run status for each ``summary.json`` status.
MLFLOW_STATUS = {
    "completed": "FINISHED",
    "stopped": "FINISHED",
    "interrupted": "KILLED",
    "failed": "FAILED",
}
#: Log lines a tracker library prints on its own while a tracker starts (MLflow announces
#: every new database it sets up).
_CHATTY_LOGGERS = ("mlflow.store.db.utils", "alembic")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, made absolute (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path) if os.path.isabs(path) else Path.cwd() / path


# ---------------------------------------------------------------------------- what is logged
#: Row keys that are not metrics: the step itself, and texts by count.
SKIPPED_KEYS = frozenset({"round", "failure_reasons"})


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``a.b.c`` keys (lists and empty mappings stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def round_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """A round's numbers: each number by its key, mappings of numbers as ``key/sub``; lists
    (``distill_curve``), texts, booleans and missing values are left out."""
    metrics: dict[str, float] = {}
    for key, value in row.items():
        if key in SKIPPED_KEYS:
            continue
        if _is_number(value):
            metrics[key] = value
        elif isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                if _is_number(sub_value):
                    metrics[f"{key}/{sub_key}"] = sub_value
    return metrics


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of ``summary.json`` a tracker keeps: ``final/<key>`` (the last round),
    ``best/<key>``, ``communication/<key>``, ``privacy/epsilon``, ``rounds_completed`` and
    ``wall_seconds``."""
    final = summary.get("final") or {}
    metrics = {f"final/{k}": v for k, v in round_metrics(final).items()}
    for key, best in (summary.get("best") or {}).items():
        value: Any = best.get("value") if isinstance(best, Mapping) else best
        if _is_number(value):
            metrics[f"best/{key}"] = value
    for key, value in (summary.get("communication") or {}).items():
        if _is_number(value):
            metrics[f"communication/{key}"] = value
    epsilon: Any = (summary.get("privacy") or {}).get("epsilon")
    if _is_number(epsilon):
        metrics["privacy/epsilon"] = epsilon
    for key in ("rounds_completed", "wall_seconds"):
        if _is_number(summary.get(key)):
            metrics[key] = summary[key]
    return metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------- trackers
class TensorBoardLog:
    """Per-round metrics as TensorBoard scalars (``tracker=tensorboard``).

    Numbers become scalars tagged by their key, mappings of numbers ``key/sub-key``
    (``faults_injected/crash``), and ``client_accuracies`` a histogram; the step is the
    round. Lists (``distill_curve``) and texts are left out. A resumed run drops the events
    of rounds after its checkpoint (``purge_step``), as ``metrics.jsonl`` drops their rows.
    """

    SKIPPED = SKIPPED_KEYS

    def __init__(self, run_dir: Path, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(
            log_dir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge_step
        )

    def log(self, row: Mapping[str, Any]) -> None:
        """Log one round's row."""
        step = int(row.get("round", 0))
        for key, value in row.items():
            if key in self.SKIPPED or value is None or isinstance(value, bool | str):
                continue
            if isinstance(value, int | float):
                self._writer.add_scalar(key, value, step)
            elif key == "client_accuracies" and isinstance(value, Mapping) and value:
                self._writer.add_histogram(
                    key, np.array(list(value.values()), dtype=np.float64), step
                )
            elif isinstance(value, Mapping):
                for sub_key, sub_value in value.items():
                    if isinstance(sub_value, int | float) and not isinstance(sub_value, bool):
                        self._writer.add_scalar(f"{key}/{sub_key}", sub_value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class TensorBoardTracker:
    """:class:`TensorBoardLog` in ``<run dir>/tensorboard/``: the rounds only."""

    name = "tensorboard"

    def __init__(self) -> None:
        self._log: TensorBoardLog | None = None

    def start(
        self,
        config: Mapping[str, Any],
        run_dir: Path,
        *,
        resume_from_round: int | None,
        kept_rows: Sequence[Mapping[str, Any]],
    ) -> None:
        purge_step = None if resume_from_round is None else resume_from_round + 1
        self._log = TensorBoardLog(run_dir, purge_step=purge_step)

    def log_round(self, row: Mapping[str, Any]) -> None:
        if self._log is not None:
            self._log.log(row)

    def finish(self, summary: Mapping[str, Any], files: Sequence[Path]) -> None:
        """Nothing: the summary and the report are in the same run directory."""

    def close(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()


class MlflowTracker:
    """One MLflow run per fedkd run, named after the run directory and tagged
    ``fedkd.run_dir``; a resumed run continues it (rounds run again log a second value at
    their step). The tracking URI is set on this tracker's own client, never globally."""

    name = "mlflow"

    def __init__(self, options: MlflowOptions) -> None:
        self.options = options
        self._client: Any = None
        self._run_id: str | None = None

    def start(
        self,
        config: Mapping[str, Any],
        run_dir: Path,
        *,
        resume_from_round: int | None,
        kept_rows: Sequence[Mapping[str, Any]],
    ) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir).resolve()
        uri = self.options.resolved_uri()
        database = sqlite_path(uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        with _quiet(_CHATTY_LOGGERS):  # MLflow announces each new database on the console
            client = MlflowClient(tracking_uri=uri)
            experiment_id = self._experiment_id(client, database)
        run_id = None if resume_from_round is None else _earlier_run(client, experiment_id, run_dir)
        if run_id is None:
            run = client.create_run(
                experiment_id, run_name=run_dir.name, tags={"fedkd.run_dir": str(run_dir)}
            )
            run_id, replay = run.info.run_id, kept_rows
        else:
            client.update_run(run_id, status="RUNNING")
            replay = ()
        self._client, self._run_id = client, run_id
        logged = client.get_run(run_id).data.params if resume_from_round is not None else {}
        params = {
            key: _param_text(value)
            for key, value in ((_mlflow_key(k), v) for k, v in flatten(config).items())
            if key not in logged
        }
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes 100 params per batch
            client.log_batch(run_id, params=items[start : start + 100], synchronous=True)
        if resume_from_round is not None:
            tag = RunTag("fedkd.resumed_from_round", str(resume_from_round))
            client.log_batch(run_id, tags=[tag], synchronous=True)
        for row in replay:
            self.log_round(row)

    def _experiment_id(self, client: Any, database: Path | None) -> str:
        """The experiment's id, created when missing (a SQLite store's artifacts beside it)."""
        name = self.options.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None if database is None else (database.parent / "mlruns").as_uri()
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except Exception:  # another job of a parallel sweep may have just created it
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def log_round(self, row: Mapping[str, Any]) -> None:
        self._log_metrics(round_metrics(row), step=int(row.get("round", 0)))

    def finish(self, summary: Mapping[str, Any], files: Sequence[Path]) -> None:
        from mlflow.entities import RunTag

        client, run_id = self._client, self._run_id
        status = str(summary.get("status", "completed"))
        last_round = (summary.get("final") or {}).get("round") or 0
        self._log_metrics(summary_metrics(summary), step=int(last_round))
        tags = [RunTag("fedkd.status", status)]
        if summary.get("error"):
            tags.append(RunTag("fedkd.error", str(summary["error"])[:5000]))
        client.log_batch(run_id, tags=tags, synchronous=True)
        for path in files:
            client.log_artifact(run_id, str(path))
        self._run_id = None
        client.set_terminated(run_id, status=MLFLOW_STATUS.get(status, "FINISHED"))

    def close(self) -> None:
        """End a run that did not finish (the tracker failed, or the run never got a summary)."""
        run_id, self._run_id = self._run_id, None
        if run_id is not None:
            self._client.set_terminated(run_id, status="FAILED")

    def _log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        items = [Metric(_mlflow_key(k), float(v), timestamp, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):  # MLflow takes 1000 metrics per batch
            self._client.log_batch(
                self._run_id, metrics=items[start : start + 1000], synchronous=True
            )


def _earlier_run(client: Any, experiment_id: str, run_dir: Path) -> str | None:
    """The latest MLflow run logged for ``run_dir`` (what a resumed run continues)."""
    if "'" in str(run_dir):  # not expressible in a search filter: start a new run
        return None
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`fedkd.run_dir` = '{run_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(runs[0].info.run_id) if runs else None


def _mlflow_key(key: str) -> str:
    """A key MLflow accepts: letters, digits, ``_ - . / `` and spaces only."""
    return re.sub(r"[^\w\-./ ]", "_", key).strip("/") or "_"


def _param_text(value: Any) -> str:
    """A parameter as text: strings as they are, other values as JSON (``null``,
    ``[0.5, 0.8]``), cut to MLflow's 6000 characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


class WandbTracker:
    """One W&B run per fedkd run (``reinit="create_new"``, so a sweep's jobs never share
    one), named after the run directory; the config flattened, each round at its step, the
    summary's numbers and status in ``run.summary``, the run directory's files as an
    artifact. W&B prints nothing (``silent``, console capture off) and never prompts: offline
    needs no account, and online without a key is refused when the config is checked. An
    offline run cannot be resumed, so a resumed fedkd run starts a new W&B run that logs the
    kept rounds again."""

    name = "wandb"

    def __init__(self, options: WandbOptions) -> None:
        self.options = options
        self._run: Any = None
        self._run_name = ""

    def start(
        self,
        config: Mapping[str, Any],
        run_dir: Path,
        *,
        resume_from_round: int | None,
        kept_rows: Sequence[Mapping[str, Any]],
    ) -> None:
        import wandb

        run_dir = Path(run_dir).resolve()
        directory = Path(self.options.dir) if self.options.dir else run_dir
        directory.mkdir(parents=True, exist_ok=True)
        params = {**flatten(config), "fedkd.run_dir": str(run_dir)}
        if resume_from_round is not None:
            params["fedkd.resumed_from_round"] = resume_from_round
        self._run_name = run_dir.name
        self._run = wandb.init(
            project=self.options.project,
            entity=self.options.entity,
            dir=str(directory),
            mode=self.options.mode,  # type: ignore[arg-type]
            name=run_dir.name,
            config=params,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", disable_git=True),
        )
        for row in kept_rows if resume_from_round is not None else ():
            self.log_round(row)

    def log_round(self, row: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.log(round_metrics(row), step=int(row.get("round", 0)))

    def finish(self, summary: Mapping[str, Any], files: Sequence[Path]) -> None:
        import wandb

        run = self._run
        if run is None:
            return
        status = str(summary.get("status", "completed"))
        run.summary.update({**summary_metrics(summary), "status": status})
        if files:
            name = re.sub(r"[^\w\-.]", "_", self._run_name) or "run"
            artifact = wandb.Artifact(f"{name}-results", type="fedkd-run")
            for path in files:
                artifact.add_file(str(path), name=Path(path).name)
            run.log_artifact(artifact)
        self._run = None
        run.finish(exit_code=0 if status in ENDED_WELL else 1)

    def close(self) -> None:
        """End a run that did not finish (the tracker failed, or the run never got a summary)."""
        run, self._run = self._run, None
        if run is not None:
            run.finish(exit_code=1)


@contextlib.contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    """Only warnings and errors from these loggers while inside."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)
