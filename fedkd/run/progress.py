"""The one progress display of a run, and the final summary table (rich).

The display is a single live line on :func:`fedkd.run.console.console` (stderr): a spinner,
the rounds done, the latest accuracies and what the run is doing now
(:func:`fedkd.run.console.phase`). Log lines print above it. The table goes to stdout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fedkd.run import names
from fedkd.run.console import attach_display, results_console
from fedkd.run.console import console as shared_console


class RoundProgress:
    """A live line over rounds: rounds done, the latest accuracies, the current phase.

    Entering it makes it the display :func:`fedkd.run.console.phase` updates; entering an
    already started one again (``simulations.run`` starts it before the data is built, the
    server enters it for the rounds) is a no-op, and only the outermost exit stops it.
    """

    def __init__(
        self,
        num_rounds: int,
        *,
        enabled: bool = True,
        console: Console | None = None,
        headline: str = names.GLOBAL_TEST,
    ):
        self.console = console or shared_console()
        self.enabled = enabled
        #: The method's paper metric, shown first (``headline_metric`` of the strategy).
        self.headline = names.new_name(headline)
        self._depth = 0
        self._previous: Any = None
        self._progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("[bold]fedkd[/bold] round"),
            MofNCompleteColumn(),
            BarColumn(bar_width=24),
            TextColumn("{task.description}"),
            TextColumn("[dim]{task.fields[phase]}[/dim]"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task("", total=num_rounds, phase="· starting")

    def __enter__(self) -> RoundProgress:
        if self._depth == 0:
            self._progress.start()
            self._previous = attach_display(self)
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._progress.update(self._task, phase="")
            self._progress.stop()
            attach_display(self._previous)

    def set_phase(self, text: str) -> None:
        """Show what the run is doing now (``building the data``, ``round 3: training``)."""
        self._progress.update(self._task, phase=f"· {text}" if text else "")

    def set_headline(self, headline: str) -> None:
        """The metric shown first (the strategy's ``headline_metric``, once it is known)."""
        self.headline = names.new_name(headline)

    def advance_to(self, server_round: int) -> None:
        """Show rounds up to ``server_round`` as done (a resumed run)."""
        self._progress.update(
            self._task, completed=server_round, description=f"resumed after round {server_round}"
        )

    def update(self, row: Mapping[str, Any]) -> None:
        """Show one finished round."""
        row = names.with_aliases(row)
        shown = [names.GLOBAL_TEST, names.ENSEMBLE_TEST]
        if self.headline == names.LOCAL_GLOBAL_TEST:
            shown.insert(0, names.LOCAL_GLOBAL_TEST)
        parts = [
            f"{names.SHORT[key]} {_pct(row[key])}"
            for key in shown
            if isinstance(row.get(key), int | float)
        ]
        if row.get("epsilon") is not None:
            parts.append(f"ε {row['epsilon']:.3g}")
        if row.get("clients_failed"):
            parts.append(f"[red]{row['clients_failed']} failed[/red]")
        self._progress.update(
            self._task, completed=row.get("round", 0), description="  ".join(parts)
        )


def summary_table(summary: Mapping[str, Any]) -> Table:
    """The results table printed at the end of a run (a summary of any fedkd version)."""
    summary = names.canonical(summary)
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
    headline = (summary.get("headline") or {}).get("metric", names.GLOBAL_TEST)
    for key in accuracy_rows(summary):
        fmt = _auc if key.endswith("_auc") else _pct
        best_entry = best.get(key)
        label = names.LABELS[key]
        if key == names.GLOBAL_TEST and headline != names.GLOBAL_TEST:
            label += " (fedkd's addition)"  # the method's paper has no global model
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
    if "secagg_uplink_bytes" in comm:  # the server saw only sums; the protocol's own cost
        up, down = _bytes(comm["secagg_uplink_bytes"]), _bytes(comm["secagg_downlink_bytes"])
        table.add_row("secure aggregation messages", f"{up} up / {down} down", "")
    table.add_row(
        "global model size",
        f"{summary['parameters']:,} params / {_bytes(summary['size_bytes'])}",
        "",
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


def accuracy_rows(summary: Mapping[str, Any]) -> list[str]:
    """The accuracy keys of the results table, in order (:mod:`fedkd.run.names`): the
    method's headline first; the global model on the clients' test splits, pooled, or else
    Flower's federated evaluation of it; the clients' own models likewise. ``summary`` is
    read with the new names (:func:`fedkd.run.names.canonical`)."""
    final, best = summary.get("final", {}), summary.get("best", {})

    def present(key: str) -> bool:
        return isinstance(final.get(key), int | float) or key in best

    global_rows = [
        names.GLOBAL_TEST,
        "global_on_global_test_balanced_accuracy",  # binary tasks
        "global_on_global_test_auc",
        names.ENSEMBLE_TEST,
        names.GLOBAL_LOCAL_TEST if present(names.GLOBAL_LOCAL_TEST) else names.GLOBAL_EVALUATED,
    ]
    evaluated = (names.GLOBAL_LOCAL_TEST, names.GLOBAL_EVALUATED, names.LOCAL_EVALUATED)
    if not any(present(key) for key in evaluated):  # a fedkd 0.1 run: which model is unknown
        global_rows.append(names.EVALUATED_ALIAS)
    local_rows = [
        names.LOCAL_GLOBAL_TEST,
        names.LOCAL_LOCAL_TEST if present(names.LOCAL_LOCAL_TEST) else names.LOCAL_EVALUATED,
    ]
    headline = (summary.get("headline") or {}).get("metric", names.GLOBAL_TEST)
    ordered = (
        local_rows + global_rows
        if headline == names.LOCAL_GLOBAL_TEST
        else global_rows + local_rows
    )
    return [key for key in ordered if present(key)]


def print_summary(summary: Mapping[str, Any], run_dir: Path) -> None:
    """Print the results table and where the run directory is, on stdout (the results;
    progress and logs are on stderr)."""
    out = results_console()
    out.print(summary_table(summary))
    out.print(f"results in {run_dir}", soft_wrap=True, highlight=False)


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
