"""The run report's self-contained ``report.html`` page: run facts, results table, plots."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedkd.run.report_plots import (
    ACCURACY_PLOT,
    BYTES_PLOT,
    CLIENT_ACCURACY_PLOT,
    COMPRESSION_PLOT,
    FAILURES_PLOT,
    LABEL_DISTRIBUTION_PLOT,
    PRIVACY_PLOT,
)

REPORT_HTML = "report.html"

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
    if summary.get("data_seed") is not None:
        run_items.append(("data seed", summary["data_seed"]))
    headline = summary.get("headline") or {}
    if headline.get("metric") == "client_accuracy_mean":
        value = headline.get("value")
        shown = "-" if value is None else f"{100 * value:.1f}%"
        run_items.append(
            ("the paper's metric", f"the clients' own models, mean test accuracy: {shown}")
        )
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
