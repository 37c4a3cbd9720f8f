"""Experiment trackers of a run: TensorBoard, MLflow and Weights & Biases (``tracker=...``).

:class:`fedkd.run.results.RunWriter` drives one :class:`Trackers` fan-out through the run's
life cycle: ``start`` (the resolved config as parameters, flattened to ``a.b.c`` keys),
``log_round`` (each round's numbers as they arrive, step = round), ``finish`` (the
summary's numbers and status, then the run directory's files as artifacts) and ``close``.
Trackers are a view of the results, never a reason to lose them: one that fails is logged
once and switched off, and the run goes on. Each package is imported when its tracker
starts, so importing fedkd never loads them.

TensorBoard gets the per-round numbers only (its events already live in the run
directory); MLflow and W&B get everything. The trackers themselves are in
:mod:`fedkd.run.tracker_backends`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import netrc
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from fedkd.errors import ConfigError, check_block, check_types
from fedkd.run.console import phase
from fedkd.run.tracker_backends import TENSORBOARD_DIR as TENSORBOARD_DIR
from fedkd.run.tracker_backends import MlflowTracker, TensorBoardTracker, WandbTracker, sqlite_path
from fedkd.run.tracker_backends import TensorBoardLog as TensorBoardLog
from fedkd.run.tracker_backends import flatten as flatten
from fedkd.run.tracker_backends import round_metrics as round_metrics
from fedkd.run.tracker_backends import summary_metrics as summary_metrics

logger = logging.getLogger(__name__)

#: The names ``tracker`` may list.
TRACKERS = ("tensorboard", "mlflow", "wandb")
#: How to install what a tracker needs (each also comes with ``pip install 'fedkd[trackers]'``).
INSTALL = {
    "tensorboard": "pip install tensorboard",
    "mlflow": "pip install mlflow-skinny sqlalchemy alembic",
    "wandb": "pip install wandb",
}
WANDB_MODES = ("offline", "online", "disabled")
#: MLflow's default local store (MLflow 3 no longer writes its old file store).
MLFLOW_DEFAULT_URI = "sqlite:///mlflow.db"
#: URI schemes MLflow stores through SQLAlchemy (and alembic, for the schema).
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


# ---------------------------------------------------------------------------- options
@dataclass(frozen=True)
class MlflowOptions:
    """``trackers.mlflow``: where the MLflow tracker writes.

    Parameters
    ----------
    tracking_uri : str | None, default None
        The tracking store (``sqlite:///path.db``, ``http://host:5000``, ...). None:
        ``$MLFLOW_TRACKING_URI`` when set, else MLflow's own default, ``sqlite:///mlflow.db``
        in the working directory. A SQLite store keeps its artifacts in ``mlruns/`` beside
        the database file.
    experiment : str, default "fedkd"
        The experiment every run is logged under (created when missing).
    """

    tracking_uri: str | None = None
    experiment: str = "fedkd"

    def __post_init__(self) -> None:
        check_types(self, prefix="trackers.mlflow.")
        if not self.experiment.strip():
            raise ConfigError("trackers.mlflow.experiment must not be empty")

    def resolved_uri(self) -> str:
        """The tracking URI to use, a relative SQLite path made absolute (a run's working
        directory may change later; the store must not)."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or MLFLOW_DEFAULT_URI
        path = sqlite_path(uri)
        return uri if path is None else f"sqlite:///{path}"

    def packages(self) -> tuple[str, ...]:
        """The modules this store needs: SQLAlchemy and alembic for a database."""
        scheme = urlparse(self.resolved_uri()).scheme.split("+", 1)[0]
        return ("mlflow", "sqlalchemy", "alembic") if scheme in _DATABASE_SCHEMES else ("mlflow",)


@dataclass(frozen=True)
class WandbOptions:
    """``trackers.wandb``: where and how the W&B tracker writes.

    Parameters
    ----------
    project : str, default "fedkd"
        The W&B project.
    mode : str, default "offline"
        ``offline`` (no account needed: ``wandb sync`` uploads later), ``online`` (needs
        ``WANDB_API_KEY`` or ``wandb login``) or ``disabled``.
    dir : str | None, default None
        The folder W&B writes its ``wandb/`` folder into (None: the run directory).
    entity : str | None, default None
        The W&B user or team (None: the account's default).
    """

    project: str = "fedkd"
    mode: str = "offline"
    dir: str | None = None
    entity: str | None = None

    def __post_init__(self) -> None:
        check_types(self, prefix="trackers.wandb.")
        if not self.project.strip():
            raise ConfigError("trackers.wandb.project must not be empty")
        if self.mode not in WANDB_MODES:
            raise ConfigError(
                f"trackers.wandb.mode must be one of {list(WANDB_MODES)}, got {self.mode!r}"
            )


@dataclass(frozen=True)
class TrackerSpec:
    """The ``tracker`` key and the ``trackers`` block: which trackers a run logs to.

    Parameters
    ----------
    names : tuple of str, default ()
        The trackers, in the order they start, out of :data:`TRACKERS`.
    mlflow : MlflowOptions
        ``trackers.mlflow``.
    wandb : WandbOptions
        ``trackers.wandb``.
    """

    names: tuple[str, ...] = ()
    mlflow: MlflowOptions = field(default_factory=MlflowOptions)
    wandb: WandbOptions = field(default_factory=WandbOptions)

    @classmethod
    def from_config(
        cls, tracker: Any, options: Any = None, *, report_tensorboard: bool = False
    ) -> TrackerSpec:
        """Build from ``tracker`` (null, a name or a list of names) and ``trackers``.

        ``report_tensorboard`` is ``report.tensorboard``, kept for one release as another way
        to add ``tensorboard``.

        Raises
        ------
        ConfigError
            An unknown or repeated name, a value of the wrong type (naming the key), or a
            tracker whose package is not installed (saying how to install it); W&B online
            without credentials.
        """
        names = _tracker_names(tracker)
        if report_tensorboard and "tensorboard" not in names:
            names += ("tensorboard",)
        block = check_block({} if options is None else options, "trackers", ("mlflow", "wandb"))
        spec = cls(
            names=names,
            mlflow=MlflowOptions(**_options_block(block.get("mlflow"), "mlflow", MlflowOptions)),
            wandb=WandbOptions(**_options_block(block.get("wandb"), "wandb", WandbOptions)),
        )
        spec.check_installed()
        return spec

    def with_tensorboard(self) -> TrackerSpec:
        """This spec with ``tensorboard`` added (``report.tensorboard=true``)."""
        if "tensorboard" in self.names:
            return self
        return dataclasses.replace(self, names=(*self.names, "tensorboard"))

    def check_installed(self) -> None:
        """Refuse a tracker whose packages are missing, and W&B online without credentials."""
        for name in self.names:
            needed = self.mlflow.packages() if name == "mlflow" else (name,)
            missing = [module for module in needed if not module_available(module)]
            if missing:
                raise ConfigError(
                    f"tracker={name} needs {' and '.join(missing)}, not installed: "
                    f"{INSTALL[name]} (or pip install 'fedkd[trackers]')"
                )
        if "wandb" in self.names and self.wandb.mode == "online" and not wandb_logged_in():
            raise ConfigError(
                "trackers.wandb.mode=online needs a W&B API key and found none: run `wandb "
                "login` or set WANDB_API_KEY (or keep trackers.wandb.mode=offline and upload "
                "later with `wandb sync`)"
            )


def _tracker_names(tracker: Any) -> tuple[str, ...]:
    if tracker is None:
        return ()
    listed = [tracker] if isinstance(tracker, str) else tracker
    if not isinstance(listed, list | tuple) or not all(isinstance(n, str) for n in listed):
        raise ConfigError(
            f"tracker must be null, a name or a list of names out of {list(TRACKERS)}, "
            f"got {tracker!r}"
        )
    for name in listed:
        if name not in TRACKERS:
            raise ConfigError(f"tracker: unknown tracker {name!r}; choose from {list(TRACKERS)}")
        if listed.count(name) > 1:
            raise ConfigError(f"tracker lists {name!r} twice: {list(listed)}")
    return tuple(listed)


def _options_block(value: Any, name: str, cls: type) -> dict[str, Any]:
    allowed = [f.name for f in dataclasses.fields(cls)]
    return check_block({} if value is None else value, f"trackers.{name}", allowed)


def module_available(module: str) -> bool:
    """Whether ``module`` is importable (without importing it)."""
    return importlib.util.find_spec(module) is not None


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by torch's SummaryWriter) is importable."""
    return module_available("tensorboard")


def wandb_logged_in() -> bool:
    """Whether W&B will find credentials without prompting: ``WANDB_API_KEY`` (or an
    identity token file), or the ``.netrc`` entry ``wandb login`` writes for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return host is not None and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


# ---------------------------------------------------------------------------- trackers
class Tracker(Protocol):
    """One tracker's life cycle (:class:`Trackers` calls these, catching every error)."""

    name: str

    def start(
        self,
        config: Mapping[str, Any],
        run_dir: Path,
        *,
        resume_from_round: int | None,
        kept_rows: Sequence[Mapping[str, Any]],
    ) -> None: ...

    def log_round(self, row: Mapping[str, Any]) -> None: ...

    def finish(self, summary: Mapping[str, Any], files: Sequence[Path]) -> None: ...

    def close(self) -> None: ...


#: Each tracker by name, built from the spec.
BUILDERS: dict[str, Callable[[TrackerSpec], Tracker]] = {
    "tensorboard": lambda spec: TensorBoardTracker(),
    "mlflow": lambda spec: MlflowTracker(spec.mlflow),
    "wandb": lambda spec: WandbTracker(spec.wandb),
}


class Trackers:
    """The run's trackers, fed together; one that fails is logged once and switched off.

    Parameters
    ----------
    spec : TrackerSpec | None
        Which trackers, with their options (default: none).
    """

    def __init__(self, spec: TrackerSpec | None = None) -> None:
        self.spec = spec or TrackerSpec()
        self._active: list[Tracker] = []

    @property
    def active(self) -> tuple[str, ...]:
        """The trackers that are on (started and not failed since)."""
        return tuple(tracker.name for tracker in self._active)

    def start(
        self,
        config: Mapping[str, Any],
        run_dir: Path,
        resume_from_round: int | None = None,
        *,
        kept_rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Start every tracker: a new run, or with ``resume_from_round`` the continuation
        of one whose rounds up to it are ``kept_rows``."""
        self.close()
        if self.spec.names:
            phase(f"starting the trackers: {', '.join(self.spec.names)}")
        for name in self.spec.names:
            tracker = BUILDERS[name](self.spec)
            try:
                tracker.start(
                    config,
                    Path(run_dir),
                    resume_from_round=resume_from_round,
                    kept_rows=kept_rows,
                )
            except Exception:  # a view of the results, never a reason to stop the run
                logger.exception("could not start %s tracking; the run goes on without it", name)
                _close_quietly(tracker)
                continue
            self._active.append(tracker)

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Log one round's row (step = its ``round``)."""
        for tracker in list(self._active):
            self._call(tracker, "logging a round", lambda t: t.log_round(row))

    def finish(self, summary: Mapping[str, Any], files: Sequence[Path]) -> None:
        """Log the summary and ``files`` (the run directory's results and report), then end
        every tracker."""
        for tracker in list(self._active):
            self._call(tracker, "logging the summary", lambda t: t.finish(summary, files))
        self.close()

    def close(self) -> None:
        """End every tracker (a run that did not finish is marked failed where it can be)."""
        active, self._active = self._active, []
        for tracker in active:
            _close_quietly(tracker)

    def _call(self, tracker: Tracker, doing: str, action: Callable[[Tracker], None]) -> None:
        try:
            action(tracker)
        except Exception:
            logger.exception(
                "%s tracking failed while %s; it is off for the rest of the run",
                tracker.name,
                doing,
            )
            self._active.remove(tracker)
            _close_quietly(tracker)


def _close_quietly(tracker: Tracker) -> None:
    try:
        tracker.close()
    except Exception:
        logger.exception("could not close the %s tracker", tracker.name)
