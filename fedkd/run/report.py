"""The per-run report: PNG plots, a self-contained ``report.html``, TensorBoard events.

:func:`write_report` is called once at the end of a run, after ``metrics.jsonl`` and
``summary.json`` are on disk; every plot is drawn on its own, so one that fails is reported
(returned, then recorded in ``summary.json`` as ``report_error``) and the others still appear.
:class:`TensorBoardLog` writes the same per-round metrics as they arrive
(``report.tensorboard=true``).
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedkd.errors import ConfigError, check_block

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

ACCURACY_PLOT = "accuracy.png"
BYTES_PLOT = "bytes.png"
CLIENT_ACCURACY_PLOT = "client_accuracy.png"
LABEL_DISTRIBUTION_PLOT = "label_distribution.png"
PRIVACY_PLOT = "privacy.png"
FAILURES_PLOT = "failures.png"
COMPRESSION_PLOT = "compression.png"
REPORT_HTML = "report.html"
TENSORBOARD_DIR = "tensorboard"

#: Rounds shown in the per-client accuracy plot at most (evenly spaced, always the last).
MAX_BOX_ROUNDS = 25


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


# ---------------------------------------------------------------------------- plots
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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _numbers(rows: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (int(r["round"]), float(r[key]))
        for r in rows
        if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
    ]


def _finish_axes(
    ax: Axes,
    *,
    xlabel: str,
    ylabel: str,
    legend_loc: Literal["best", "lower right"] = "best",
    legend_outside: bool = False,
) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        if legend_outside:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        else:
            ax.legend(loc=legend_loc, fontsize=8)


def plot_accuracy(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Test accuracy per round: student, teacher ensemble, clients (mean on the server test
    set, and on their own local test splits)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    try:
        for key, label in (
            ("student_accuracy", "student"),
            ("ensemble_accuracy", "teacher ensemble"),
            ("client_accuracy_mean", "clients, mean (server test)"),
            ("client_accuracy", "clients (own local test)"),
        ):
            points = _numbers(rows, key)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        ax.set_ylim(0, 1.02)
        _finish_axes(ax, xlabel="round", ylabel="test accuracy", legend_loc="lower right")
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


def plot_bytes(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Uplink and downlink megabytes per round (all clients together)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    try:
        rounds = [r for r in rows if r.get("round", 0) >= 1]
        for key, label in (("uplink_bytes", "uplink"), ("downlink_bytes", "downlink")):
            points = [(r["round"], r.get(key, 0) / 1e6) for r in rounds]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        _finish_axes(ax, xlabel="round", ylabel="MB per round")
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


def plot_client_accuracies(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Each client's accuracy on the server test set per round: a box per round with the
    clients as dots (``client_accuracies``). False when no row has them."""
    per_round = [
        (int(r["round"]), [float(v) for v in r["client_accuracies"].values()])
        for r in rows
        if isinstance(r.get("client_accuracies"), Mapping) and r["client_accuracies"]
    ]
    if not per_round:
        return False
    if len(per_round) > MAX_BOX_ROUNDS:
        keep = np.unique(np.linspace(0, len(per_round) - 1, MAX_BOX_ROUNDS).round().astype(int))
        per_round = [per_round[i] for i in keep]
    rounds = [r for r, _ in per_round]
    values = [v for _, v in per_round]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(rounds)), 4))
    try:
        width = 0.6 * (min(np.diff(rounds)) if len(rounds) > 1 else 1)
        # manage_ticks=False: boxplot's own fixed tick labels would not follow the round axis.
        ax.boxplot(values, positions=rounds, widths=width, showfliers=False, manage_ticks=False)
        ax.set_xlim(rounds[0] - width, rounds[-1] + width)
        for round_, accuracies in per_round:
            # Fixed offsets (no random jitter): the same run draws the same picture.
            offsets = np.linspace(-0.25, 0.25, len(accuracies)) * width
            ax.scatter(
                np.full(len(accuracies), round_) + offsets,
                accuracies,
                s=8,
                alpha=0.6,
                color="tab:blue",
            )
        ax.set_ylim(0, 1.02)
        ax.set_title("each client's model on the server test set", fontsize=10)
        _finish_axes(ax, xlabel="round", ylabel="test accuracy")
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


def plot_label_distribution(histograms: Mapping[int, Sequence[int]], path: Path) -> bool:
    """Label counts of each client's local training split, stacked by class (a heatmap
    above 20 classes). False when there are none (no clients, e.g. ``centralized``).

    ``flwr_datasets.visualization.plot_label_distributions`` draws the same picture, but it
    needs a flwr-datasets ``Partitioner`` holding the dataset. The server has none: fedkd's
    partitioners only yield index sets in the data layer (and under ``flwr run`` the data
    lives on the SuperNodes), while the histograms the clients report at discovery are
    always there. So this plots those histograms with matplotlib directly.
    """
    if not histograms:
        return False
    partitions = sorted(histograms)
    counts = np.array([list(histograms[p]) for p in partitions], dtype=np.int64)
    num_classes = counts.shape[1]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.4, 0.3 * len(partitions) + 2.5)), 4))
    try:
        if num_classes <= 20:
            colors = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
            bottom = np.zeros(len(partitions))
            for label in range(num_classes):
                ax.bar(
                    partitions,
                    counts[:, label],
                    bottom=bottom,
                    width=0.8,
                    color=colors(label),
                    label=str(label),
                )
                bottom += counts[:, label]
            ax.legend(
                title="class", fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), ncol=1
            )
            ax.set_ylabel("training examples")
        else:
            image = ax.imshow(counts.T, aspect="auto", origin="lower", cmap="viridis")
            fig.colorbar(image, ax=ax, label="training examples")
            ax.set_ylabel("class")
        ax.set_xlabel("client (partition id)")
        if len(partitions) <= 30:
            ax.set_xticks(partitions)
        ax.set_title("label distribution per client (local training split)", fontsize=10)
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


def plot_privacy(
    rows: Sequence[Mapping[str, Any]], path: Path, *, budget: float | None = None
) -> bool:
    """Epsilon spent so far per round (and the clients' own DP-SGD accountants, and the
    budget ``max_epsilon``). False when the run has no privacy accounting."""
    epsilon = _numbers(rows, "epsilon")
    client_epsilon = _numbers(rows, "client_epsilon_max")
    if not epsilon and not client_epsilon:
        return False
    deltas = {float(r["delta"]) for r in rows if isinstance(r.get("delta"), int | float)}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    try:
        delta = f" (δ = {next(iter(deltas)):g})" if len(deltas) == 1 else ""
        if epsilon:
            ax.plot(*zip(*epsilon, strict=True), marker="o", markersize=3, label=f"ε{delta}")
        if client_epsilon:
            ax.plot(
                *zip(*client_epsilon, strict=True),
                marker="s",
                markersize=3,
                label="ε, clients' own accountants (max)",
            )
        if isinstance(budget, int | float):
            ax.axhline(budget, color="tab:red", linestyle="--", label=f"budget ε = {budget:g}")
        ax.set_ylim(bottom=0)
        _finish_axes(ax, xlabel="round", ylabel="ε spent so far", legend_loc="lower right")
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


_COMPRESSION_COLORS = {
    "student": "tab:blue", "teacher": "black", "int8": "tab:orange",
    "pruned": "tab:green", "low rank": "tab:purple",
}  # fmt: skip


def _compression_family(method: str) -> str:
    """``teacher_pruned_80`` -> ``pruned`` (the families of fedkd.run.compression's methods)."""
    for marker, family in (("pruned", "pruned"), ("low_rank", "low rank"), ("int8", "int8")):
        if marker in method:
            return family
    return method if method in _COMPRESSION_COLORS else "teacher"


def plot_compression(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Accuracy against serialized size for the student, the teacher and each compressed
    teacher (``report.compression``). False when the run has no comparison."""
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    try:
        for row in rows:
            method = str(row["method"])
            family = _compression_family(method)
            ax.scatter(
                row["size_bytes"] / 1e3, row["accuracy"], color=_COMPRESSION_COLORS[family],
                marker="*" if family == "student" else "o",
                s=120 if family == "student" else 40, zorder=3,
            )  # fmt: skip
            ax.annotate(
                method.removeprefix("teacher_"), (row["size_bytes"] / 1e3, row["accuracy"]),
                textcoords="offset points", xytext=(4, 4), fontsize=7,
            )  # fmt: skip
        for family, color in _COMPRESSION_COLORS.items():  # legend: one entry per family
            marker = "*" if family == "student" else "o"
            ax.scatter([], [], color=color, marker=marker, label=family)
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        _finish_axes(ax, xlabel="serialized size (KB, log scale)", ylabel="test accuracy")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


def plot_failures(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Clients that replied and that failed per round (bars), injected faults by kind and
    resent messages (lines), skipped rounds shaded. False when nothing ever failed."""
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    if not any(
        r.get("clients_failed") or r.get("faults_injected") or r.get("skipped") for r in rounds
    ):
        return False
    numbers = [int(r["round"]) for r in rounds]
    ok = np.array([int(r.get("clients_ok") or 0) for r in rounds])
    failed = np.array([int(r.get("clients_failed") or 0) for r in rounds])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 4))
    try:
        ax.bar(numbers, ok, color="tab:green", alpha=0.7, label="clients ok")
        ax.bar(numbers, failed, bottom=ok, color="tab:red", alpha=0.7, label="clients failed")
        kinds = sorted({k for r in rounds for k in (r.get("faults_injected") or {})})
        for kind in kinds:
            counts = [int((r.get("faults_injected") or {}).get(kind, 0)) for r in rounds]
            ax.plot(numbers, counts, marker="x", label=f"injected: {kind}")
        if any(r.get("messages_resent") for r in rounds):
            resent = [int(r.get("messages_resent") or 0) for r in rounds]
            ax.plot(numbers, resent, marker=".", linestyle=":", label="messages resent")
        skipped = [n for n, r in zip(numbers, rounds, strict=True) if r.get("skipped")]
        for index, number in enumerate(skipped):
            ax.axvspan(
                number - 0.5,
                number + 0.5,
                color="grey",
                alpha=0.25,
                label="round skipped" if index == 0 else None,
            )
        _finish_axes(ax, xlabel="round", ylabel="clients", legend_outside=True)
        _save(fig, path)
    finally:
        plt.close(fig)
    return True


# ---------------------------------------------------------------------------- report.html
_CAPTIONS = {
    ACCURACY_PLOT: "Test accuracy per round",
    CLIENT_ACCURACY_PLOT: "Each client's accuracy on the server test set",
    BYTES_PLOT: "Communication per round",
    LABEL_DISTRIBUTION_PLOT: "Label distribution per client",
    PRIVACY_PLOT: "Privacy budget spent",
    FAILURES_PLOT: "Client failures per round",
    COMPRESSION_PLOT: "The student against the teacher compressed three ways",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
dl.run { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.run dt { font-weight: 600; }
dl.run dd { margin: 0; }
table { border-collapse: collapse; margin: 1em 0; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-completed { color: #17702b; } .status-stopped { color: #a86400; }
.status-failed { color: #b00020; }
.errors { background: #fff3f3; border-left: 4px solid #b00020; padding: 0.5em 1em; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0; flex: 1 1 500px; }
figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
footer { margin-top: 2em; font-size: 0.85em; color: #666; }
"""


def summary_rows(summary: Mapping[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """Title, column headers and rows of the end-of-run results table.

    The data of :func:`fedkd.run.progress.summary_table` (the rich table printed at the end of a
    run), read from it so the page and the console never disagree.
    """
    from fedkd.run.progress import summary_table

    table = summary_table(summary)
    headers = [str(column.header) for column in table.columns]
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    rows = [list(row) for row in zip(*cells, strict=True)]
    return str(table.title or ""), headers, rows


def html_table(caption: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of an HTML table, every text escaped; cells after the first are numbers
    (right-aligned)."""
    esc = html.escape
    return [
        "<table>",
        f"<caption>{esc(caption)}</caption>",
        "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>",
        *(
            "<tr>"
            + "".join(
                f"<td>{esc(cell)}</td>" if index == 0 else f'<td class="num">{esc(cell)}</td>'
                for index, cell in enumerate(row)
            )
            + "</tr>"
            for row in rows
        ),
        "</table>",
    ]


def report_html(
    summary: Mapping[str, Any], images: Sequence[str], *, errors: Sequence[str] = ()
) -> str:
    """A self-contained page (inline CSS, no scripts, nothing fetched from the network):
    the run, its results table and the plots ``images`` (file names in the run directory).
    Every text from the run is escaped."""
    esc = html.escape
    status = str(summary.get("status", "?"))
    title, headers, rows = summary_rows(summary)
    run_items = [
        ("method", summary.get("strategy")),
        ("dataset", summary.get("dataset")),
        ("partition", summary.get("partition")),
        ("client model / student", f"{summary.get('model')} / {summary.get('student')}"),
        ("clients", summary.get("num_clients")),
        ("rounds", f"{summary.get('rounds_completed', 0)} of {summary.get('num_rounds')}"),
        ("seed", summary.get("seed")),
    ]
    if summary.get("resumed_from_round") is not None:
        run_items.append(("resumed after round", summary["resumed_from_round"]))
    for key in ("stopped_reason", "error"):
        if summary.get(key):
            run_items.append((key.replace("_", " "), summary[key]))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>fedkd: {esc(str(summary.get('strategy')))} on "
        f"{esc(str(summary.get('dataset')))}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>fedkd: {esc(str(summary.get('strategy')))} on "
        f"{esc(str(summary.get('dataset')))}</h1>",
        f'<p>status: <strong class="status-{esc(status)}">{esc(status)}</strong></p>',
        '<dl class="run">',
        *(f"<dt>{esc(label)}</dt><dd>{esc(str(value))}</dd>" for label, value in run_items),
        "</dl>",
        *html_table(title, headers, rows),
    ]
    if errors:
        parts += [
            '<div class="errors"><p>Some parts of this report could not be drawn:</p><ul>',
            *(f"<li>{esc(e)}</li>" for e in errors),
            "</ul></div>",
        ]
    parts += _compression_html(summary)
    parts.append('<div class="figures">')
    for name in images:
        caption = _CAPTIONS.get(name, name)
        parts.append(
            f'<figure><img src="{esc(name, quote=True)}" alt="{esc(caption, quote=True)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    parts += [
        "</div>",
        "<footer>Numbers: "
        '<a href="metrics.jsonl">metrics.jsonl</a> (one row per round), '
        '<a href="summary.json">summary.json</a>, <a href="config.yaml">config.yaml</a>.'
        "</footer>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def _compression_html(summary: Mapping[str, Any]) -> list[str]:
    """The compression table and the export check, when the run has them."""
    esc = html.escape
    parts: list[str] = []
    rows = summary.get("compression") or []
    if rows:
        parts += [
            "<table>",
            "<caption>The student against the teacher, compressed (test set; latency: "
            "median CPU milliseconds, one thread)</caption>",
            "<tr><th>method</th><th>accuracy</th><th>parameters</th><th>size</th>"
            "<th>latency, batch 1</th><th>latency, batch 64</th></tr>",
        ]
        for row in rows:
            parts.append(
                f"<tr><td>{esc(str(row['method']))}</td>"
                f'<td class="num">{100 * row["accuracy"]:.1f}%</td>'
                f'<td class="num">{row["parameters"]:,}</td>'
                f'<td class="num">{row["size_bytes"] / 1e3:,.1f} KB</td>'
                f'<td class="num">{row["latency_ms_batch1"]:.3f} ms</td>'
                f'<td class="num">{row["latency_ms_batch64"]:.3f} ms</td></tr>'
            )
        parts.append("</table>")
    export = summary.get("export") or {}
    if export:
        items = []
        for name, entry in export.items():
            if "skipped" in entry:
                items.append(f"<li>{esc(name)}: skipped ({esc(str(entry['skipped']))})</li>")
            else:
                diff = entry.get("max_abs_diff")
                check = "not compared" if diff is None else f"max |difference| {diff:.2e}"
                path = Path(str(entry.get("path", ""))).name
                items.append(
                    f'<li>{esc(name)}: <a href="{esc(path, quote=True)}">{esc(path)}</a> '
                    f"({esc(check)} against the student)</li>"
                )
        parts += ["<p>Exported student:</p>", "<ul>", *items, "</ul>"]
    return parts


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
