"""``python -m simulations.report RUN_DIRS...``: a comparison table (Markdown) and plot from runs.

With ``--html FILE``, also one page with the table, the plot (embedded), the key settings,
and per run its rounds, provenance and a link to its own ``report.html``.

Every directory given (or found below it, e.g. a Hydra ``multirun/`` folder) that holds a
``summary.json`` is one run. Runs are grouped by setting (dataset, partition and its
parameter, number of clients, client model) and method; seeds are aggregated as
mean ± standard deviation. A setting's table starts with the majority-class baseline (from
``summary.json``'s ``majority_baseline``); on a binary task it also has the global model's
balanced accuracy and ROC-AUC. The first column is each method's paper's metric: the
global model on the global test set, or the clients' own models' mean (marked "clients")
for FedMD, DS-FL, FD, FedProto and local-only, whose papers have no global model. Columns
are named by :data:`fedkd.run.names.LABELS` (which model, on which test data); runs
written before those names are read through :func:`fedkd.run.names.canonical`.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedkd.run import names, provenance
from fedkd.run.report import html_table
from fedkd.run.report_settings import key_settings
from fedkd.run.results import CONFIG_FILE, REPORT_HTML, SUMMARY_FILE, headline_metric

#: What ``python -m simulations.report --help`` says first.
DESCRIPTION = (
    "Compare finished fedkd runs. Every directory given, or found below one (a Hydra "
    "multirun folder, say), that holds a summary.json is one run. The runs are grouped by "
    "setting (dataset, partition, clients, client model) and method, and one Markdown table "
    "per setting is printed (or written with --out): each method's final accuracies, which "
    "model on which test data, as mean ± standard deviation over seeds, the rounds run and "
    "the uplink. --plot draws the headline accuracies as a bar chart; --html writes one "
    "page with the tables, the chart, and every run's rounds, key settings, fedkd version "
    "and commit, and a link to its own report.html."
)
#: The first column: each method's headline (``summary.json``'s ``headline``: the metric
#: its paper reports), marked "clients" where that is the clients' models' mean.
HEADLINE = "headline"
METRICS = (
    (HEADLINE, "paper's metric"),
    *(
        (key, names.LABELS[key])
        for key in (
            names.GLOBAL_TEST,
            names.ENSEMBLE_TEST,
            names.LOCAL_GLOBAL_TEST,
            names.LOCAL_LOCAL_TEST,
        )
    ),
)
#: Columns added for binary tasks (the AUC is not a percentage).
AUC = "global_on_global_test_auc"
BINARY_METRICS = (
    (
        "global_on_global_test_balanced_accuracy",
        names.LABELS["global_on_global_test_balanced_accuracy"],
    ),
    (AUC, names.LABELS[AUC]),
)
MAJORITY_ROW = "majority class"
METHOD_ORDER = (
    "local_only", "proxy_only", "fedmd", "dsfl", "fedet", "fd", "fedavg", "feddf", "centralized",
)  # fmt: skip


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run directories (those with a ``summary.json``) at or below ``paths``."""
    runs: set[Path] = set()
    for path in paths:
        if (path / SUMMARY_FILE).is_file():
            runs.add(path)
        runs.update(p.parent for p in path.rglob(SUMMARY_FILE))
    return sorted(runs)


def load_run(run_dir: Path) -> dict[str, Any]:
    """A run's summary (readable by the new metric names, :func:`fedkd.run.names.canonical`,
    whichever fedkd wrote it), plus the config it ran with."""
    summary = names.canonical(json.loads((run_dir / SUMMARY_FILE).read_text()))
    config_path = run_dir / CONFIG_FILE
    summary["config"] = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    summary["run_dir"] = str(run_dir)
    return summary


def setting_of(run: dict[str, Any]) -> str:
    """The experimental setting a run belongs to (everything but method and seed)."""
    config = run.get("config", {})
    partition = config.get("partition", {"name": run.get("partition", "?")})
    detail = ""
    if partition.get("name") == "dirichlet":
        detail = f" alpha={partition.get('alpha')}"
    elif partition.get("name") == "pathological":
        detail = f" k={partition.get('classes_per_client')}"
    model = config.get("model", {}).get("name", run.get("model", "?"))
    return (
        f"{run['dataset']}, {partition.get('name')}{detail}, "
        f"{run['num_clients']} clients, {model} clients"
    )


def method_of(run: dict[str, Any]) -> str:
    """The method label of a run: the strategy name, with variants that change its meaning."""
    config = run.get("config", {})
    strategy = config.get("strategy", {})
    if run["strategy"] == "centralized" and strategy.get("train_on") == "proxy":
        return "proxy_only"
    label = str(run["strategy"])
    distill = config.get("distill", {})
    if distill.get("name", "kd") != "kd":
        label += f"+{distill['name']}"
    student = config.get("student", {}).get("name")
    if student and student != config.get("model", {}).get("name", student):
        label += f" ({student} student)"
    privacy = config.get("privacy") or {}
    if privacy.get("name", "none") != "none":
        label += f" [{privacy['name']}]"
    return label


def _mean_std(values: Sequence[float], *, percent: bool = True) -> str:
    """``mean ± std`` in % (one decimal), or as a fraction (three decimals: AUCs)."""
    if not values:
        return "–"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def headline_of(run: dict[str, Any]) -> str:
    """The metric a run's method reports first (runs written before ``headline`` existed:
    their strategy class's, read from their config)."""
    metric = (run.get("headline") or {}).get("metric")
    metric = str(metric) if metric else headline_metric(run.get("config") or {})
    return names.new_name(metric)


def _final(run: dict[str, Any], key: str) -> float | None:
    if key == HEADLINE:
        key = headline_of(run)
    value = names.with_aliases(run.get("final") or {}).get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def comparison(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Runs grouped as ``{setting: {method: [runs...]}}``."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.get("status") == "completed":
            grouped[setting_of(run)][method_of(run)].append(run)
    return grouped


def _method_key(method: str) -> tuple[int, str]:
    base = method.split("+")[0].split(" ")[0]  # "feddf+hint (mlp student)" sorts as feddf
    order = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return order, method


def comparison_tables(
    runs: Sequence[dict[str, Any]],
) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per setting: its name, the column headers and one row per method (final accuracies
    as mean ± std over seeds in %, the rounds run, total uplink per client and round),
    after the majority-class baseline's row. A binary task (runs with the global model's
    balanced accuracy) adds that (%) and its ROC-AUC."""
    tables = []
    for setting, methods in sorted(comparison(runs).items()):
        group_runs = [run for group in methods.values() for run in group]
        binary = any(_final(run, BINARY_METRICS[0][0]) is not None for run in group_runs)
        columns = [*METRICS, *BINARY_METRICS] if binary else list(METRICS)
        header = [
            "method",
            "seeds",
            "rounds",
            *(label for _, label in columns),
            "uplink / client / round",
        ]
        rows = []
        baseline = _majority_row(group_runs, binary=binary)
        if baseline is not None:
            rows.append(baseline)
        for method in sorted(methods, key=_method_key):
            group = methods[method]
            cells = [method, str(len(group)), rounds_of(group)]
            for key, _ in columns:
                values = [v for run in group if (v := _final(run, key)) is not None]
                cell = _mean_std(values, percent=key != AUC)
                if key == HEADLINE and values and headline_of(group[0]) != names.GLOBAL_TEST:
                    cell += " (clients)"
                cells.append(cell)
            cells.append(_uplink_per_client_round(group))
            rows.append(cells)
        tables.append((setting, header, rows))
    return tables


def _majority_row(runs: Sequence[dict[str, Any]], *, binary: bool) -> list[str] | None:
    """The majority-class baseline's row: its test accuracy (and on a binary task balanced
    accuracy and AUC) over data seeds, one value per data seed (``data_seed``, or ``seed``
    when that is null: every run of a data seed has the same data); None when no run has
    ``majority_baseline``."""
    per_seed: dict[Any, dict[str, Any]] = {}
    for run in runs:
        if isinstance(run.get("majority_baseline"), dict):
            data_seed = run.get("data_seed")
            key = run.get("seed") if data_seed is None else data_seed
            per_seed.setdefault(key, run["majority_baseline"])
    if not per_seed:
        return None

    def cell(key: str, *, percent: bool = True) -> str:
        values = [float(v) for b in per_seed.values() if isinstance(v := b.get(key), int | float)]
        return _mean_std(values, percent=percent)

    cells = [MAJORITY_ROW, str(len(per_seed)), "–", cell("accuracy"), *["–"] * (len(METRICS) - 1)]
    if binary:
        cells += [cell("balanced_accuracy"), cell("auc", percent=False)]
    return [*cells, "–"]


def markdown_table(runs: Sequence[dict[str, Any]]) -> str:
    """One Markdown table per setting (see :func:`comparison_tables`)."""
    lines: list[str] = []
    for setting, header, rows in comparison_tables(runs):
        lines += [f"**{setting}**", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        lines.append("")
    return "\n".join(lines)


def rounds_text(run: dict[str, Any]) -> str:
    """``completed/total`` rounds of a run (``?`` for what its summary lacks)."""
    completed, total = run.get("rounds_completed"), run.get("num_rounds")
    if total is None:
        total = (run.get("config") or {}).get("num_rounds")
    return f"{'?' if completed is None else completed}/{'?' if total is None else total}"


def rounds_of(group: Sequence[dict[str, Any]]) -> str:
    """The rounds of a method's runs: one ``completed/total`` when they agree, else each."""
    return ", ".join(dict.fromkeys(rounds_text(run) for run in group))


def _uplink_per_client_round(group: Sequence[dict[str, Any]]) -> str:
    per_client_round = [
        run["communication"]["uplink_bytes"]
        / max(1, run.get("rounds_completed", 1))
        / max(1, run["num_clients"])
        for run in group
    ]
    value = statistics.fmean(per_client_round)
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def plot(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars of each method's final headline accuracy (its paper's metric: the
    global model on the global test set, or the clients' own models' mean for FedMD,
    DS-FL, FD, FedProto, local-only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = comparison(runs)
    settings = sorted(grouped)
    methods = sorted({m for s in settings for m in grouped[s]}, key=_method_key)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(settings) * len(methods) / 4), 4))
    width = 0.8 / max(1, len(methods))
    for index, method in enumerate(methods):
        means, errors = [], []
        for setting in settings:
            group = grouped[setting].get(method, [])
            values = [v for run in group if (v := _final(run, HEADLINE)) is not None]
            means.append(statistics.fmean(values) if values else 0.0)
            errors.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        positions = [s + (index - (len(methods) - 1) / 2) * width for s in range(len(settings))]
        ax.bar(positions, means, width, yerr=errors, label=method, capsize=2)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([s.replace(", ", "\n", 2) for s in settings], fontsize=7)
    ax.set_ylabel("final accuracy, paper's metric")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def html_page(runs: Sequence[dict[str, Any]], path: Path, *, plot_path: Path | None) -> str:
    """One page (inline CSS, no scripts, no network): the comparison tables, the bar chart
    ``plot_path`` (embedded), the key settings all runs share, and per run its rounds, the
    key settings where it differs, its provenance and a link to its own ``report.html``.
    Links are relative to ``path``'s folder, so the page and the runs can be moved
    together."""
    esc = html.escape
    base = path.resolve().parent

    def href(target: Path) -> str:
        return esc(Path(os.path.relpath(target.resolve(), base)).as_posix(), quote=True)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>fedkd: comparison of runs</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>fedkd: comparison of runs</h1>",
        f"<p>{len(runs)} run(s); final accuracy in % (ROC-AUC as a fraction), mean ± "
        "standard deviation over seeds (completed runs only); rounds as completed/total.</p>",
    ]
    for setting, header, rows in comparison_tables(runs):
        parts += html_table(setting, header, rows)
    if plot_path is not None and plot_path.is_file():
        data = base64.b64encode(plot_path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="final accuracy per '
            "setting and method\"><figcaption>Final accuracy, each method's paper's metric "
            "(the global model on the global test set; the clients' own models' mean for "
            f"fedmd, dsfl, fd, fedproto and local_only); also in {esc(plot_path.name)}"
            "</figcaption></figure>"
        )
    ordered = sorted(runs, key=_run_order)
    settings = [dict(key_settings(run.get("config") or {})) for run in ordered]
    common = _common_settings(settings)
    parts += ["<h2>Settings every run shares</h2>"]
    if common:
        parts += [
            '<dl class="settings">',
            *(f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in common.items()),
            "</dl>",
        ]
    else:
        parts.append("<p>None of the key settings is the same in every run.</p>")
    parts += ["<h2>Runs</h2>", "<table>", _run_header()]
    for run, own in zip(ordered, settings, strict=True):
        run_dir = Path(run["run_dir"])
        report = run_dir / REPORT_HTML
        link = (
            f'<a href="{href(report)}">{esc(str(run_dir))}</a>'
            if report.is_file()
            else f"{esc(str(run_dir))} (no {REPORT_HTML})"
        )
        differing = [(label, text) for label, text in own.items() if label not in common]
        differing += [(label, "–") for label in _all_labels(settings) if label not in own]
        cells = [
            esc(setting_of(run)),
            esc(method_of(run)),
            esc(str(run.get("seed"))),
            esc(str(run.get("status"))),
            esc(rounds_text(run)),
            "<br>".join(f"<b>{esc(label)}</b>: {esc(text)}" for label, text in differing) or "–",
            esc(provenance.describe(run)),
            link,
        ]
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts += ["</table>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _common_settings(settings: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The key settings every run has, with the same text, in the first run's order."""
    if not settings:
        return {}
    return {
        label: text
        for label, text in settings[0].items()
        if all(other.get(label) == text for other in settings[1:])
    }


def _all_labels(settings: Sequence[Mapping[str, str]]) -> list[str]:
    return list(dict.fromkeys(label for own in settings for label in own))


def _run_order(run: dict[str, Any]) -> tuple[str, tuple[int, str], int, str]:
    seed = run.get("seed")
    return (
        setting_of(run),
        _method_key(method_of(run)),
        seed if isinstance(seed, int) else -1,
        str(run["run_dir"]),
    )


def _run_header() -> str:
    columns = ("setting", "method", "seed", "status", "rounds", "settings that differ",
               "code, date, host", "report")  # fmt: skip
    return "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
h2 { font-size: 1.15em; margin: 1.4em 0 0.4em; border-bottom: 1px solid #ddd; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.settings dt { font-weight: 600; }
dl.settings dd { margin: 0; font-family: ui-monospace, Menlo, monospace; font-size: 0.9em; }
td { vertical-align: top; font-size: 0.92em; }
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m simulations.report", description=DESCRIPTION)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or folders of runs")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: stdout)")
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart here")
    parser.add_argument(
        "--html",
        type=Path,
        help="write one HTML page here: the table, the bar chart (--plot, or FILE's name with "
        ".png) and links to every run's report.html",
    )
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        parser.error(f"no such directory: {', '.join(missing)}")
    runs = [load_run(d) for d in find_runs(args.paths)]
    if not runs:
        parser.error("no run directory (with a summary.json) found")
    table = markdown_table(runs)
    if args.out:
        args.out.write_text(table)
    else:
        sys.stdout.write(table + "\n")
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
    plot_path = args.plot or (args.html.with_suffix(".png") if args.html else None)
    if plot_path is not None:
        plot(runs, plot_path)
    if args.html:
        args.html.write_text(html_page(runs, args.html, plot_path=plot_path), encoding="utf-8")
    failed = [r["run_dir"] for r in runs if r.get("status") != "completed"]
    if failed:
        print(f"left out {len(failed)} run(s) that did not complete: {failed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
