"""The per-run report: PNG plots, a self-contained ``report.html`` (the plots embedded).

:func:`write_report` is called once at the end of a run, after ``metrics.jsonl`` and
``summary.json`` are on disk; every plot is drawn on its own, so one that fails is reported
(returned, then recorded in ``summary.json`` as ``report_error``) and the others still appear.
TensorBoard events (``report.tensorboard=true``, an alias of ``tracker=tensorboard``) are
written by :mod:`fedkd.run.trackers`; ``TensorBoardLog`` is re-exported here for one release.

The plots live in :mod:`fedkd.run.report_plots` and the page in :mod:`fedkd.run.report_page`;
their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from fedkd.run.report_plots import LOSS_PLOT as LOSS_PLOT
from fedkd.run.report_plots import MAX_BOX_ROUNDS as MAX_BOX_ROUNDS
from fedkd.run.report_plots import PRIVACY_PLOT as PRIVACY_PLOT
from fedkd.run.report_plots import plot_accuracy as plot_accuracy
from fedkd.run.report_plots import plot_bytes as plot_bytes
from fedkd.run.report_plots import plot_client_accuracies as plot_client_accuracies
from fedkd.run.report_plots import plot_compression as plot_compression
from fedkd.run.report_plots import plot_failures as plot_failures
from fedkd.run.report_plots import plot_label_distribution as plot_label_distribution
from fedkd.run.report_plots import plot_loss as plot_loss
from fedkd.run.report_plots import plot_privacy as plot_privacy
from fedkd.run.trackers import TENSORBOARD_DIR as TENSORBOARD_DIR
from fedkd.run.trackers import TensorBoardLog as TensorBoardLog
from fedkd.run.trackers import tensorboard_available as tensorboard_available

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportSpec:
    """The ``report`` config block: what is written besides the numbers.

    Parameters
    ----------
    html : bool, default True
        Write ``report.html`` (the plots are written either way).
    tensorboard : bool, default False
        Kept for one release: the same as adding ``tensorboard`` to ``tracker``
        (:mod:`fedkd.run.trackers`), every round's metrics as TensorBoard events in
        ``<run dir>/tensorboard/``; needs the ``tensorboard`` package.
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
    """Write every plot that applies to this run, then ``report.html`` (when on): the plots
    embedded in it, and the settings read from the run directory's ``config.yaml``.

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
            images = {path.name: path.read_bytes() for path in result.files}
            (run_dir / REPORT_HTML).write_text(
                report_html(
                    summary,
                    images,
                    errors=result.errors,
                    config_yaml=_read_config(run_dir),
                ),
                encoding="utf-8",
            )
            result.files.append(run_dir / REPORT_HTML)
        except Exception as exc:
            logger.exception("could not write %s", run_dir / REPORT_HTML)
            result.errors.append(f"{REPORT_HTML}: {type(exc).__name__}: {exc}")
    return result


def _read_config(run_dir: Path) -> str | None:
    """The run's resolved ``config.yaml`` as written, or None when there is none."""
    from fedkd.run.results import CONFIG_FILE  # results imports this module

    path = run_dir / CONFIG_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


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
        (LOSS_PLOT, lambda path: plot_loss(rows, path)),
        (CLIENT_ACCURACY_PLOT, lambda path: plot_client_accuracies(rows, path)),
        (BYTES_PLOT, lambda path: plot_bytes(rows, path)),
        (LABEL_DISTRIBUTION_PLOT, lambda path: plot_label_distribution(label_histograms, path)),
        (PRIVACY_PLOT, lambda path: plot_privacy(rows, path, budget=budget)),
        (FAILURES_PLOT, lambda path: plot_failures(rows, path)),
        (COMPRESSION_PLOT, lambda path: plot_compression(summary.get("compression") or [], path)),
    ]
