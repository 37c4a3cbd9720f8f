"""The run report's PNG plots: accuracy, bytes, clients, labels, privacy, failures, compression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ACCURACY_PLOT = "accuracy.png"
BYTES_PLOT = "bytes.png"
CLIENT_ACCURACY_PLOT = "client_accuracy.png"
LABEL_DISTRIBUTION_PLOT = "label_distribution.png"
PRIVACY_PLOT = "privacy.png"
FAILURES_PLOT = "failures.png"
COMPRESSION_PLOT = "compression.png"

#: Rounds shown in the per-client accuracy plot at most (evenly spaced, always the last).
MAX_BOX_ROUNDS = 25


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
    """Test accuracy per round: student (and its balanced accuracy on a binary task),
    teacher ensemble, clients (mean on the server test set, and on their own local test
    splits)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    try:
        for key, label in (
            ("student_accuracy", "student"),
            ("student_balanced_accuracy", "student, balanced"),  # binary tasks
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
    always there. So this plots those histograms with matplotlib directly. Under a privacy
    mechanism the clients withhold them (empty histograms): no plot.
    """
    if not histograms or not any(len(h) for h in histograms.values()):
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
    """Epsilon spent so far per round: record level, client level (when it differs), the
    clients' own DP-SGD accountants, and the budget ``max_epsilon``. False when the run has
    no privacy accounting."""
    epsilon = _numbers(rows, "epsilon")
    client_level = _numbers(rows, "epsilon_client")
    if client_level == epsilon:  # local logit_dp: one line would hide the other
        client_level = []
    client_epsilon = _numbers(rows, "client_epsilon_max")
    if not epsilon and not client_epsilon:
        return False
    deltas = {float(r["delta"]) for r in rows if isinstance(r.get("delta"), int | float)}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    try:
        delta = f" (δ = {next(iter(deltas)):g})" if len(deltas) == 1 else ""
        if epsilon:
            label = f"ε per record{delta}" if client_level else f"ε{delta}"
            ax.plot(*zip(*epsilon, strict=True), marker="o", markersize=3, label=label)
        if client_level:
            ax.plot(
                *zip(*client_level, strict=True), marker="v", markersize=3, label="ε per client"
            )
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
