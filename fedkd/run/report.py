"""The per-run report: PNG plots, a self-contained ``report.html``, TensorBoard events.

:func:`write_report` is called once at the end of a run, after ``metrics.jsonl`` and
``summary.json`` are on disk; every plot is drawn on its own, so one that fails is reported
(returned, then recorded in ``summary.json`` as ``report_error``) and the others still appear.
:class:`TensorBoardLog` writes the same per-round metrics as they arrive
(``report.tensorboard=true``).

The plots live in :mod:`fedkd.run.report_plots` and the page in :mod:`fedkd.run.report_page`;
their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.errors import ConfigError, check_block
from fedkd.run.report_page import REPORT_HTML as REPORT_HTML
from fedkd.run.report_page import html_table as html_table
from fedkd.run.report_page import report_html as report_html
from fedkd.run.report_page import summary_rows as summary_rows
from fedkd.run.report_plots import ACCURACY_PLOT as ACCURACY_PLOT
from fedkd.run.report_plots import BYTES_PLOT as BYTES_PLOT
from fedkd.run.report_plots import CLIENT_ACCURACY_PLOT as CLIENT_ACCURACY_PLOT
from fedkd.run.report_plots import COMPRESSION_PLOT as COMPRESSION_PLOT
from fedkd.run.report_plots import FAILURES_PLOT as FAILURES_PLOT
from fedkd.run.report_plots import LABEL_DISTRIBUTION_PLOT as LABEL_DISTRIBUTION_PLOT
from fedkd.run.report_plots import MAX_BOX_ROUNDS as MAX_BOX_ROUNDS
from fedkd.run.report_plots import PRIVACY_PLOT as PRIVACY_PLOT
from fedkd.run.report_plots import plot_accuracy as plot_accuracy
from fedkd.run.report_plots import plot_bytes as plot_bytes
from fedkd.run.report_plots import plot_client_accuracies as plot_client_accuracies
from fedkd.run.report_plots import plot_compression as plot_compression
from fedkd.run.report_plots import plot_failures as plot_failures
from fedkd.run.report_plots import plot_label_distribution as plot_label_distribution
from fedkd.run.report_plots import plot_privacy as plot_privacy

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class ReportSpec:
    """The ``report`` config block: what is written besides the numbers.

    Parameters
    ----------
    html : bool, default True
        Write ``report.html`` (the plots are written either way).
    tensorboard : bool, default False
        Also log every round's metrics as TensorBoard events into ``<run dir>/tensorboard/``;
        needs the ``tensorboard`` package.
    export : bool, default True
        Export the final student as TorchScript (and ONNX when the ``onnx`` extra is
        installed), checked against the student's own outputs (:mod:`fedkd.run.export`).
    compression : bool, default False
        Compare the student with a trained teacher compressed three ways (int8, pruning,
        low rank; :mod:`fedkd.run.compression`): ``summary.json``'s ``compression`` rows.
    teacher_epochs : int, default 10
        Epochs of the teacher for the comparison: the client architecture (partition 0's
        under ``model=hetero``) trained on every client's training data pooled, with the
        clients' optimizer settings.
    sparsities, ranks : tuples
        Pruning sparsities and low-rank ranks compared.
    latency_repeats : int, default 100
        Timed runs per latency (the median is reported).
    """

    html: bool = True
    tensorboard: bool = False
    export: bool = True
    compression: bool = False
    teacher_epochs: int = 10
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9)
    ranks: tuple[int, ...] = (4, 8, 16)
    latency_repeats: int = 100

    @classmethod
    def from_config(cls, cfg: Any) -> ReportSpec:
        """Build from the ``report`` block (``None``: the defaults).

        Raises
        ------
        ConfigError
            Not a mapping, an unknown key, a value of the wrong type (each naming
            ``report.<key>``), or ``tensorboard`` on without the ``tensorboard`` package.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        block = check_block({} if cfg is None else cfg, "report", defaults)
        for key, value in block.items():
            _check_type(f"report.{key}", value, defaults[key])
            if isinstance(defaults[key], tuple):
                block[key] = tuple(value)
        for key in ("teacher_epochs", "latency_repeats"):
            if block.get(key, 1) < 1:
                raise ConfigError(f"report.{key} must be >= 1, got {block[key]!r}")
        for value in block.get("sparsities", ()):
            if not 0 < value < 1:
                raise ConfigError(f"report.sparsities must lie in (0, 1), got {value!r}")
        for value in block.get("ranks", ()):
            if value < 1:
                raise ConfigError(f"report.ranks must be >= 1, got {value!r}")
        spec = cls(**block)
        if spec.tensorboard and not tensorboard_available():
            raise ConfigError(
                "report.tensorboard=true needs the tensorboard package, which is not "
                "installed: pip install tensorboard (or set report.tensorboard=false)"
            )
        return spec


def _check_type(key: str, value: Any, default: Any) -> None:
    if isinstance(default, tuple):  # a list of numbers of the default's element type
        element = type(default[0]) if default else float
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        for item in value:
            _check_type(key, item, element(0))
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = default is None or isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{key} must be a {type(default).__name__}, got {value!r}")


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by torch's SummaryWriter) is importable."""
    return importlib.util.find_spec("tensorboard") is not None


# ---------------------------------------------------------------------------- writing
@dataclass
class ReportResult:
    """What :func:`write_report` wrote, and what it could not (``"<file>: <error>"``)."""

    files: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def write_report(
    run_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    *,
    label_histograms: Mapping[int, Sequence[int]] | None = None,
    spec: ReportSpec | None = None,
) -> ReportResult:
    """Write every plot that applies to this run, then ``report.html`` (when on).

    Never raises for a plot or the page: errors are logged and returned.
    """
    spec = spec or ReportSpec()
    run_dir = Path(run_dir)
    result = ReportResult()
    for name, draw in _figures(rows, summary, label_histograms or {}):
        path = run_dir / name
        try:
            if draw(path):
                result.files.append(path)
        except Exception as exc:  # one broken plot must not cost the others (or the numbers)
            logger.exception("could not write %s", path)
            result.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    if spec.html:
        try:
            (run_dir / REPORT_HTML).write_text(
                report_html(summary, [p.name for p in result.files], errors=result.errors),
                encoding="utf-8",
            )
            result.files.append(run_dir / REPORT_HTML)
        except Exception as exc:
            logger.exception("could not write %s", run_dir / REPORT_HTML)
            result.errors.append(f"{REPORT_HTML}: {type(exc).__name__}: {exc}")
    return result


def write_plots(
    rows: Sequence[Mapping[str, Any]],
    run_dir: Path,
    *,
    summary: Mapping[str, Any] | None = None,
    label_histograms: Mapping[int, Sequence[int]] | None = None,
) -> list[Path]:
    """Every plot that applies (no HTML); raises on the first failure."""
    written = []
    for name, draw in _figures(rows, summary or {}, label_histograms or {}):
        if draw(Path(run_dir) / name):
            written.append(Path(run_dir) / name)
    return written


def _figures(
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    label_histograms: Mapping[int, Sequence[int]],
) -> list[tuple[str, Callable[[Path], bool]]]:
    """The plots in page order; each draw function returns False when it has no data."""
    budget = (summary.get("privacy") or {}).get("max_epsilon")
    return [
        (ACCURACY_PLOT, lambda path: plot_accuracy(rows, path)),
        (CLIENT_ACCURACY_PLOT, lambda path: plot_client_accuracies(rows, path)),
        (BYTES_PLOT, lambda path: plot_bytes(rows, path)),
        (LABEL_DISTRIBUTION_PLOT, lambda path: plot_label_distribution(label_histograms, path)),
        (PRIVACY_PLOT, lambda path: plot_privacy(rows, path, budget=budget)),
        (FAILURES_PLOT, lambda path: plot_failures(rows, path)),
        (COMPRESSION_PLOT, lambda path: plot_compression(summary.get("compression") or [], path)),
    ]


# ---------------------------------------------------------------------------- TensorBoard
class TensorBoardLog:
    """Per-round metrics as TensorBoard scalars (``report.tensorboard=true``).

    Numbers become scalars tagged by their key, mappings of numbers ``key/sub-key``
    (``faults_injected/crash``), and ``client_accuracies`` a histogram; the step is the
    round. Lists (``distill_curve``) and texts are left out. A resumed run drops the events
    of rounds after its checkpoint (``purge_step``), as ``metrics.jsonl`` drops their rows.
    """

    SKIPPED = frozenset({"round", "failure_reasons"})

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
