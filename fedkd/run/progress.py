"""The one progress display of a run, and the final summary table (rich)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class RoundProgress:
    """A progress bar over rounds whose description shows the latest accuracies."""

    def __init__(
        self,
        num_rounds: int,
        *,
        enabled: bool = True,
        console: Console | None = None,
        headline: str = "student_accuracy",
    ):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        #: The method's paper metric, shown first (``headline_metric`` of the strategy).
        self.headline = headline
        self._progress = Progress(
            TextColumn("[bold]fedkd[/bold] round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task("starting", total=num_rounds)

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance_to(self, server_round: int) -> None:
        """Show rounds up to ``server_round`` as done (a resumed run)."""
        self._progress.update(
            self._task, completed=server_round, description=f"resumed after round {server_round}"
        )

    def update(self, row: Mapping[str, Any]) -> None:
        """Show one finished round."""
        parts = [f"student {_pct(row.get('student_accuracy'))}"]
        if self.headline == "client_accuracy_mean":
            parts.insert(0, f"clients {_pct(row.get('client_accuracy_mean'))}")
            if row.get("student_accuracy") is None:
                parts.pop()
        if row.get("ensemble_accuracy") is not None:
            parts.append(f"ensemble {_pct(row['ensemble_accuracy'])}")
        if row.get("epsilon") is not None:
            parts.append(f"ε {row['epsilon']:.3g}")
        if row.get("clients_failed"):
            parts.append(f"[red]{row['clients_failed']} failed[/red]")
        self._progress.update(
            self._task, completed=row.get("round", 0), description="  ".join(parts)
        )


def summary_table(summary: Mapping[str, Any]) -> Table:
    """The results table printed at the end of a run."""
    final = summary.get("final", {})
    best = summary.get("best", {})
    table = Table(
        title=(
            f"fedkd: {summary['strategy']} on {summary['dataset']} "
            f"({summary['num_clients']} clients, {summary.get('rounds_completed', 0)}/"
            f"{summary['num_rounds']} rounds, {summary['status']})"
        )
    )
    table.add_column("metric")
    table.add_column("final", justify="right")
    table.add_column("best (round)", justify="right")
    headline = (summary.get("headline") or {}).get("metric", "student_accuracy")
    clients_first = headline == "client_accuracy_mean"
    own_models = (
        ("client_accuracy_mean", "clients' models, test (mean)", _pct),
        ("personalized_accuracy_mean", "clients' models, own splits (mean)", _pct),
    )
    for key, label, fmt in (
        *(own_models if clients_first else ()),
        (
            "student_accuracy",
            "student test accuracy (fedkd's addition)"
            if clients_first
            else "student test accuracy",
            _pct,
        ),
        ("student_balanced_accuracy", "student balanced accuracy", _pct),  # binary tasks
        ("student_auc", "student ROC-AUC", _auc),  # binary tasks
        ("ensemble_accuracy", "teacher ensemble test accuracy", _pct),
        ("client_accuracy", "clients' local test accuracy", _pct),
        *(() if clients_first else own_models),
    ):
        if final.get(key) is not None or key in best:
            best_entry = best.get(key)
            table.add_row(
                label,
                fmt(final.get(key)),
                f"{fmt(best_entry['value'])} ({best_entry['round']})" if best_entry else "-",
            )
    baseline = summary.get("majority_baseline")
    if baseline:
        table.add_row(f"majority class ({baseline['class']}) baseline", _baseline(baseline), "")
    comm = summary.get("communication", {})
    table.add_row("uplink, all rounds", _bytes(comm.get("uplink_bytes", 0)), "")
    table.add_row("downlink, all rounds", _bytes(comm.get("downlink_bytes", 0)), "")
    table.add_row(
        "student size", f"{summary['parameters']:,} params / {_bytes(summary['size_bytes'])}", ""
    )
    for row in _wall_time(summary):
        table.add_row(*row)
    privacy = summary.get("privacy") or {}
    if privacy.get("epsilon") is not None:
        table.add_row(
            f"privacy ({privacy['mechanism']}), per record",
            f"ε = {privacy['epsilon']:.3g}, δ = {privacy['delta']:g}",
            _accountant(privacy.get("accountant")),
        )
        client = privacy.get("epsilon_client")
        table.add_row(
            "privacy, per client",
            "not bounded" if client is None else f"ε = {client:.3g}",
            "",
        )
        if privacy.get("trust"):
            table.add_row("privacy assumes", privacy["trust"], "")
        if privacy.get("unprotected"):
            table.add_row("sent unprotected (allowed)", ", ".join(privacy["unprotected"]), "")
    canary = (privacy.get("audit") or {}).get("canary")
    if canary and canary.get("epsilon_lower_bound") is not None:
        table.add_row(
            "canary audit",
            f"ε ≥ {canary['epsilon_lower_bound']:.3g}",
            f"95% confidence, {canary['canaries']} canaries",
        )
    for target, attacks in (privacy.get("audit") or {}).get("targets", {}).items():
        for attack, result in attacks.items():
            table.add_row(
                f"MIA {attack} on {target}",
                f"AUC {result['auc']:.3f}",
                f"TPR@1%FPR {_pct(result.get('tpr_at_1pct_fpr'))}",  # "-" if unresolvable
            )
    if summary.get("stopped_reason"):
        table.add_row("stopped", str(summary["stopped_reason"]), "")
    return table


def print_summary(summary: Mapping[str, Any], run_dir: Path) -> None:
    """Print the results table and where the run directory is (on stderr, as the progress)."""
    console = Console(stderr=True)
    console.print(summary_table(summary))
    console.print(f"results in {run_dir}")


def _wall_time(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The run's wall time: with ``summary.json``'s timing keys, the whole command and its
    parts (start-up, rounds, outputs: :mod:`fedkd.run.timing`); else ``wall_seconds``."""
    keys = ("startup_seconds", "rounds_seconds", "outputs_seconds")
    if not all(isinstance(summary.get(key), int | float) for key in keys):
        return [("wall time", f"{summary['wall_seconds']:.1f} s", "")]
    startup, rounds, outputs = (float(summary[key]) for key in keys)
    return [
        ("wall time (whole command)", f"{startup + rounds + outputs:.1f} s", ""),
        ("  start-up", f"{startup:.1f} s", ""),
        ("  rounds", f"{rounds:.1f} s", ""),
        ("  outputs", f"{outputs:.1f} s", ""),
    ]


def _accountant(name: str | None) -> str:
    if not name:
        return ""
    return "PLD" if "PLD" in name else "RDP"


def _baseline(baseline: Mapping[str, Any]) -> str:
    """Always predicting the training data's majority class: its test accuracy, and for a
    binary task its balanced accuracy and AUC."""
    text = _pct(baseline.get("accuracy"))
    if "balanced_accuracy" in baseline:
        text += f" (bal. {_pct(baseline['balanced_accuracy'])}, AUC {_auc(baseline.get('auc'))})"
    return text


def _auc(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "-"


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
