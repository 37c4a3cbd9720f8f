"""The run report's PNG plots: accuracy, losses, bytes, clients, labels, privacy, failures,
compression.

Each ``plot_<name>(..., path)`` draws one PNG and returns False (writing nothing) when the
run has nothing to show; the line plots draw through ``draw_<name>(fig, ...)`` onto a
figure the caller holds, so tests can read the lines and legends back. Accuracies are read
by the names of :mod:`fedkd.run.names` (runs written before them still plot).

No line may hide another: series that are equal at every round are drawn once, labelled
``a = b``, and every other series gets its own dash style and marker, so lines that meet for
a few rounds stay visible (:func:`draw_series`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedkd.run import names

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

ACCURACY_PLOT = "accuracy.png"
LOSS_PLOT = "loss.png"
BYTES_PLOT = "bytes.png"
CLIENT_ACCURACY_PLOT = "client_accuracy.png"
LABEL_DISTRIBUTION_PLOT = "label_distribution.png"
PRIVACY_PLOT = "privacy.png"
FAILURES_PLOT = "failures.png"
COMPRESSION_PLOT = "compression.png"

#: Rounds shown in the per-client accuracy plot at most (evenly spaced, always the last).
MAX_BOX_ROUNDS = 25
#: Markers drawn on one line at most (a long run marks every k-th round).
MAX_MARKERS = 25
#: (marker, dash style) of the 1st, 2nd, ... line of a plot: no two lines look alike.
LINE_STYLES: tuple[tuple[str, Any], ...] = (
    ("o", "-"),
    ("s", "--"),
    ("^", "-."),
    ("v", ":"),
    ("D", (0, (5, 1.5, 1, 1.5, 1, 1.5))),
    ("x", (0, (8, 2))),
    ("P", (0, (2, 2))),
    ("*", (0, (6, 2, 2, 2))),
)
#: The rows' keys of each loss (the global model's test loss by its new name).
TEST_LOSS = "global_on_global_test_loss"
TRAIN_LOSS = "train_loss"
DISTILL_LOSS = "distill_loss"
#: The pooled "on local test" accuracies and the federated-evaluation key each replaces:
#: the evaluation is drawn only for a run without the pooled number (the pooled one covers
#: every client, the evaluation only the sampled ones).
POOLED_OVER_EVALUATED = {
    names.GLOBAL_EVALUATED: names.GLOBAL_LOCAL_TEST,
    names.LOCAL_EVALUATED: names.LOCAL_LOCAL_TEST,
}
#: The per-client accuracies on the global test set (``client_accuracies`` in fedkd 0.1).
CLIENT_ACCURACIES = "local_on_global_test_accuracies"
#: Label of fedkd 0.1's ``client_accuracy`` where a run has nothing else to tell which model
#: its federated evaluation measured.
EVALUATED_LABEL = "federated evaluation, sampled clients' test splits"

Points = list[tuple[int, float]]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)  # no pyplot: no global state, no display, any thread


def _render(path: Path, figsize: tuple[float, float], draw: Callable[[Figure], bool]) -> bool:
    """Draw onto a new figure and save it as ``path`` (nothing when ``draw`` returns False)."""
    fig = _new_figure(figsize)
    if not draw(fig):
        return False
    fig.tight_layout()
    buffer = io.BytesIO()  # written at once: a failing draw leaves no half-written file
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    Path(path).write_bytes(buffer.getvalue())
    return True


def _rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows readable by the new metric names whichever fedkd wrote them."""
    return [names.with_aliases(row) for row in rows]


def _numbers(rows: Sequence[Mapping[str, Any]], key: str) -> Points:
    return [
        (int(r["round"]), float(r[key]))
        for r in rows
        if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
    ]


def merge_identical(series: Sequence[tuple[str, Points]]) -> list[tuple[str, Points]]:
    """Series equal at every round (same rounds, values within 1e-9 relative) become one,
    labelled ``first = second``, at the first one's place; empty series are dropped."""
    merged: list[tuple[list[str], Points]] = []
    for label, points in series:
        if not points:
            continue
        for labels, kept in merged:
            if _same(kept, points):
                labels.append(label)
                break
        else:
            merged.append(([label], points))
    return [(" = ".join(labels), points) for labels, points in merged]


def _same(a: Points, b: Points) -> bool:
    if [r for r, _ in a] != [r for r, _ in b]:
        return False
    return bool(np.allclose([v for _, v in a], [v for _, v in b], rtol=1e-9, atol=0.0))


def draw_series(
    ax: Axes, series: Sequence[tuple[str, Points]], *, scale: float = 1.0
) -> list[Line2D]:
    """Draw ``series`` (label, points) after :func:`merge_identical`, each line in its own
    marker and dash style (:data:`LINE_STYLES`); values are divided by ``scale``."""
    lines = []
    for index, (label, points) in enumerate(merge_identical(series)):
        marker, dashes = LINE_STYLES[index % len(LINE_STYLES)]
        rounds, values = zip(*points, strict=True)
        (line,) = ax.plot(
            rounds,
            np.asarray(values) / scale,
            marker=marker,
            linestyle=dashes,
            markersize=4,
            markevery=max(1, len(points) // MAX_MARKERS),
            label=label,
        )
        lines.append(line)
    return lines


def _finish_axes(
    ax: Axes,
    *,
    xlabel: str,
    ylabel: str,
    legend: Literal["best", "lower right", "outside"] = "best",
) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.grid(alpha=0.3)
    if not ax.get_legend_handles_labels()[0]:
        return
    if legend == "outside":
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    else:
        ax.legend(loc=legend, fontsize=8)


def legend_texts(ax: Axes) -> list[str]:
    """The labels of ``ax``'s legend, in order ([] without one)."""
    legend = ax.get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


# ---------------------------------------------------------------------------- accuracy
def accuracy_series(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, Points]]:
    """The accuracies per round, labelled by :data:`fedkd.run.names.LABELS`: the global
    model on the global test set (and its balanced accuracy on a binary task), the teacher
    ensemble, the clients' own models on the global test set, the global model and the
    clients' models on the clients' test splits (pooled; Flower's federated evaluation
    only where a run has no pooled number)."""
    rows = _rows(rows)
    keys = [
        names.GLOBAL_TEST,
        "global_on_global_test_balanced_accuracy",
        names.ENSEMBLE_TEST,
        names.LOCAL_GLOBAL_TEST,
        names.GLOBAL_LOCAL_TEST,
        names.LOCAL_LOCAL_TEST,
    ]
    series = [(names.LABELS[key], _numbers(rows, key)) for key in keys]
    for evaluated, pooled in POOLED_OVER_EVALUATED.items():
        if not _numbers(rows, pooled):
            series.append((names.LABELS[evaluated], _numbers(rows, evaluated)))
    evaluated_keys = [*POOLED_OVER_EVALUATED, *POOLED_OVER_EVALUATED.values()]
    if not any(_numbers(rows, key) for key in evaluated_keys):  # fedkd 0.1: model unknown
        series.append((EVALUATED_LABEL, _numbers(rows, names.EVALUATED_ALIAS)))
    return [(label, points) for label, points in series if points]


def draw_accuracy(fig: Figure, rows: Sequence[Mapping[str, Any]]) -> bool:
    """:func:`accuracy_series` on a 0-1 axis, the legend right of the plot."""
    ax = fig.add_subplot()
    draw_series(ax, accuracy_series(rows))
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy per round: which model, on which test data", fontsize=10)
    _finish_axes(ax, xlabel="round", ylabel="accuracy", legend="outside")
    return True


def plot_accuracy(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Accuracy per round (:func:`draw_accuracy`)."""
    return _render(path, (9.6, 4.2), lambda fig: draw_accuracy(fig, rows))


# ---------------------------------------------------------------------------- loss
def draw_loss(fig: Figure, rows: Sequence[Mapping[str, Any]]) -> bool:
    """The clients' mean local training loss and the global model's test loss per round
    (cross-entropy, from 0); the server's distillation loss, a different quantity on the
    proxy data with a scale of its own, on a second panel. False without any loss."""
    rows = _rows(rows)
    losses = [
        ("clients' local training (mean)", _numbers(rows, TRAIN_LOSS)),
        ("global model, global test set", _numbers(rows, TEST_LOSS)),
    ]
    distill = _numbers(rows, DISTILL_LOSS)
    if not any(points for _, points in losses) and not distill:
        return False
    panels = 2 if distill and any(points for _, points in losses) else 1
    axes = [fig.add_subplot(1, panels, index + 1) for index in range(panels)]
    if any(points for _, points in losses):
        draw_series(axes[0], losses)
        axes[0].set_ylim(bottom=0)
        axes[0].set_title("training and test loss", fontsize=10)
        _finish_axes(axes[0], xlabel="round", ylabel="loss", legend="best")
    if distill:
        ax = axes[-1]
        draw_series(ax, [("server distillation (last epoch)", distill)])
        ax.set_ylim(bottom=0)
        ax.set_title("distillation loss on the proxy data", fontsize=10)
        _finish_axes(ax, xlabel="round", ylabel="distillation loss", legend="best")
    return True


def plot_loss(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Losses per round (:func:`draw_loss`); False when the rows have none."""
    width = 10.0 if _numbers(_rows(rows), DISTILL_LOSS) else 6.4
    return _render(path, (width, 4), lambda fig: draw_loss(fig, rows))


# ---------------------------------------------------------------------------- bytes
def byte_unit(largest: float) -> tuple[str, float]:
    """The unit a byte count reads best in: ``("MB", 1e6)``, ``("KB", 1e3)`` or ``("B", 1)``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if largest >= size:
            return unit, size
    return "B", 1.0


def draw_bytes(fig: Figure, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Uplink and downlink per round, all clients together (and the federated evaluation's
    downlink when the run has one), on an axis from 0 in the unit the largest value reads
    best in. Equal series are one line (``uplink = downlink``)."""
    ax = fig.add_subplot()
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    series = [
        (label, [(int(r["round"]), float(r.get(key) or 0)) for r in rounds])
        for key, label in (("uplink_bytes", "uplink"), ("downlink_bytes", "downlink"))
    ]
    evaluation = _numbers(rounds, "evaluation_downlink_bytes")
    if any(value for _, value in evaluation):
        series.append(("downlink for evaluation", evaluation))
    largest = max((value for _, points in series for _, value in points), default=0.0)
    unit, size = byte_unit(largest)
    draw_series(ax, series, scale=size)
    ax.set_ylim(0, 1.15 * largest / size if largest > 0 else 1.0)
    _finish_axes(ax, xlabel="round", ylabel=f"{unit} per round (all clients)", legend="best")
    return True


def plot_bytes(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Bytes per round (:func:`draw_bytes`)."""
    return _render(path, (6.4, 4), lambda fig: draw_bytes(fig, rows))


# ---------------------------------------------------------------------------- clients
def plot_client_accuracies(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Each client's own model's accuracy on the global test set per round: a box per round
    with the clients as dots (``local_on_global_test_accuracies``). False when no row has
    them."""
    per_round = [
        (int(r["round"]), [float(v) for v in r[CLIENT_ACCURACIES].values()])
        for r in _rows(rows)
        if isinstance(r.get(CLIENT_ACCURACIES), Mapping) and r[CLIENT_ACCURACIES]
    ]
    if not per_round:
        return False
    if len(per_round) > MAX_BOX_ROUNDS:
        keep = np.unique(np.linspace(0, len(per_round) - 1, MAX_BOX_ROUNDS).round().astype(int))
        per_round = [per_round[i] for i in keep]

    def draw(fig: Figure) -> bool:
        ax = fig.add_subplot()
        rounds = [r for r, _ in per_round]
        width = 0.6 * (min(np.diff(rounds)) if len(rounds) > 1 else 1)
        # manage_ticks=False: boxplot's own fixed tick labels would not follow the round axis.
        ax.boxplot(
            [v for _, v in per_round],
            positions=rounds,
            widths=width,
            showfliers=False,
            manage_ticks=False,
        )
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
        ax.set_title("each client's own model on the global test set", fontsize=10)
        _finish_axes(ax, xlabel="round", ylabel="accuracy")
        return True

    return _render(path, (max(6.4, 0.35 * len(per_round)), 4), draw)


def plot_label_distribution(histograms: Mapping[int, Sequence[int]], path: Path) -> bool:
    """Label counts of each client's local training split, stacked by class (a heatmap
    above 20 classes). False when there are none (no clients, e.g. ``centralized``).

    ``flwr_datasets.visualization.plot_label_distributions`` draws the same picture, but it
    needs a flwr-datasets ``Partitioner`` holding the dataset. The server has none: fedkd's
    partitioners only yield index sets in the data layer (and under ``flwr run`` the data
    lives on the SuperNodes), while the histograms the clients report at discovery are
    always there. So this plots those histograms with matplotlib directly. Under a privacy
    mechanism the clients withhold them (empty histograms): no plot.
    """
    if not histograms or not any(len(h) for h in histograms.values()):
        return False
    partitions = sorted(histograms)
    counts = np.array([list(histograms[p]) for p in partitions], dtype=np.int64)
    num_classes = counts.shape[1]

    def draw(fig: Figure) -> bool:
        from matplotlib import colormaps

        ax = fig.add_subplot()
        if num_classes <= 20:
            colors = colormaps["tab10" if num_classes <= 10 else "tab20"]
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
        return True

    return _render(path, (min(16.0, max(6.4, 0.3 * len(partitions) + 2.5)), 4), draw)


# ---------------------------------------------------------------------------- privacy
def draw_privacy(
    fig: Figure, rows: Sequence[Mapping[str, Any]], *, budget: float | None = None
) -> bool:
    """Epsilon spent so far per round: record level, client level, the clients' own DP-SGD
    accountants (equal ones drawn once: ``ε per record = ε per client``), and the budget
    ``max_epsilon``. False when the run has no privacy accounting."""
    epsilon = _numbers(rows, "epsilon")
    client_level = _numbers(rows, "epsilon_client")
    client_epsilon = _numbers(rows, "client_epsilon_max")
    if not epsilon and not client_epsilon:
        return False
    deltas = {float(r["delta"]) for r in rows if isinstance(r.get("delta"), int | float)}
    delta = f" (δ = {next(iter(deltas)):g})" if len(deltas) == 1 else ""
    ax = fig.add_subplot()
    draw_series(
        ax,
        [
            (f"ε per record{delta}", epsilon),
            ("ε per client", client_level),
            ("ε, clients' own accountants (max)", client_epsilon),
        ],
    )
    if isinstance(budget, int | float):
        ax.axhline(budget, color="tab:red", linestyle="--", label=f"budget ε = {budget:g}")
    ax.set_ylim(bottom=0)
    _finish_axes(ax, xlabel="round", ylabel="ε spent so far", legend="lower right")
    return True


def plot_privacy(
    rows: Sequence[Mapping[str, Any]], path: Path, *, budget: float | None = None
) -> bool:
    """Privacy spent per round (:func:`draw_privacy`); False without accounting."""
    return _render(path, (6.4, 4), lambda fig: draw_privacy(fig, rows, budget=budget))


# ---------------------------------------------------------------------------- compression
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

    def draw(fig: Figure) -> bool:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax = fig.add_subplot()
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
        _finish_axes(ax, xlabel="serialized size (KB, log scale)", ylabel="test accuracy")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        return True

    return _render(path, (6.4, 4), draw)


# ---------------------------------------------------------------------------- failures
def draw_failures(fig: Figure, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Clients that replied and that failed per round (bars), injected faults by kind and
    resent messages (lines; equal ones drawn once), skipped rounds shaded. False when
    nothing ever failed."""
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    if not any(
        r.get("clients_failed") or r.get("faults_injected") or r.get("skipped") for r in rounds
    ):
        return False
    numbers = [int(r["round"]) for r in rounds]
    ok = np.array([int(r.get("clients_ok") or 0) for r in rounds])
    failed = np.array([int(r.get("clients_failed") or 0) for r in rounds])
    ax = fig.add_subplot()
    ax.bar(numbers, ok, color="tab:green", alpha=0.7, label="clients ok")
    ax.bar(numbers, failed, bottom=ok, color="tab:red", alpha=0.7, label="clients failed")
    kinds = sorted({k for r in rounds for k in (r.get("faults_injected") or {})})
    series: list[tuple[str, Points]] = [
        (
            f"injected: {kind}",
            [
                (n, float((r.get("faults_injected") or {}).get(kind, 0)))
                for n, r in zip(numbers, rounds, strict=True)
            ],
        )
        for kind in kinds
    ]
    if any(r.get("messages_resent") for r in rounds):
        resent = [
            (n, float(r.get("messages_resent") or 0)) for n, r in zip(numbers, rounds, strict=True)
        ]
        series.append(("messages resent", resent))
    draw_series(ax, series)
    skipped = [n for n, r in zip(numbers, rounds, strict=True) if r.get("skipped")]
    for index, number in enumerate(skipped):
        ax.axvspan(
            number - 0.5,
            number + 0.5,
            color="grey",
            alpha=0.25,
            label="round skipped" if index == 0 else None,
        )
    _finish_axes(ax, xlabel="round", ylabel="clients", legend="outside")
    return True


def plot_failures(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Client failures per round (:func:`draw_failures`); False when nothing failed."""
    return _render(path, (7.6, 4), lambda fig: draw_failures(fig, rows))
