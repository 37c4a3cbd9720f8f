"""The run report's self-contained ``report.html`` page: the run, its provenance, the results
table, the settings and the plots (embedded as ``data:`` URIs: the page alone shows them)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedkd.run import names, provenance
from fedkd.run.report_plots import (
    ACCURACY_PLOT,
    BYTES_PLOT,
    CLIENT_ACCURACY_PLOT,
    COMPRESSION_PLOT,
    FAILURES_PLOT,
    LABEL_DISTRIBUTION_PLOT,
    LOSS_PLOT,
    PRIVACY_PLOT,
)
from fedkd.run.report_settings import named, settings_html

REPORT_HTML = "report.html"
#: A plot wider than this (pixels) spans the page's two columns.
WIDE_PIXELS = 800
#: The files beside the page that it links to (and names as such).
DATA_FILES = (
    ("metrics.jsonl", "one row per round"),
    ("summary.json", "the final numbers"),
    ("config.yaml", "the resolved configuration"),
)

_CAPTIONS = {
    ACCURACY_PLOT: "Accuracy per round: which model, on which test data",
    LOSS_PLOT: "Loss per round",
    CLIENT_ACCURACY_PLOT: "Each client's own model on the global test set",
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
h2 { font-size: 1.15em; margin: 1.4em 0 0.4em; border-bottom: 1px solid #ddd; }
dl.run { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.run dt { font-weight: 600; }
dl.run dd { margin: 0; }
dl.settings dd { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace;
                 font-size: 0.9em; }
table { border-collapse: collapse; margin: 1em 0; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-completed { color: #17702b; } .status-stopped { color: #a86400; }
.status-failed, .status-interrupted { color: #b00020; }
.errors { background: #fff3f3; border-left: 4px solid #b00020; padding: 0.5em 1em; }
.note { color: #555; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: #1a4f8b; }
.blocks { columns: 3 300px; column-gap: 1.5em; font-size: 0.85em; }
.blocks table { break-inside: avoid; margin: 0 0 1em; width: 100%; table-layout: fixed; }
.blocks td { padding: 0.1em 0.4em; font-family: ui-monospace, Menlo, monospace;
             overflow-wrap: anywhere; }
.blocks td:first-child { width: 55%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr));
           gap: 1.5em; align-items: start; }
figure { margin: 0; }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
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
    summary: Mapping[str, Any],
    images: Mapping[str, bytes],
    *,
    errors: Sequence[str] = (),
    config_yaml: str | None = None,
) -> str:
    """A self-contained page (inline CSS, no scripts, nothing fetched from the network).

    Parameters
    ----------
    summary : Mapping
        The run's ``summary.json``: the run, its provenance and the results table.
    images : Mapping[str, bytes]
        The plots in page order: file name (its caption's key) -> PNG bytes, embedded as
        ``data:image/png`` URIs.
    errors : Sequence[str]
        What could not be drawn, listed on the page.
    config_yaml : str | None
        The text of the run's ``config.yaml``: the "Settings" section (None: the page says
        it was not found).

    Every text from the run is escaped.
    """
    esc = html.escape
    status = str(summary.get("status", "?"))
    title, headers, rows = summary_rows(summary)
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
        f'<p>status: <strong class="status-{esc(status, quote=True)}">{esc(status)}</strong></p>',
        '<dl class="run">',
        *(
            f"<dt>{esc(label)}</dt><dd>{esc(str(value))}</dd>"
            for label, value in run_items(summary, config_yaml)
        ),
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
    parts += settings_html(config_yaml)
    parts += ["<h2>Plots</h2>", '<div class="figures">']
    for name, png in images.items():
        caption = _CAPTIONS.get(name, name)
        data = base64.b64encode(png).decode("ascii")
        wide = ' class="wide"' if png_width(png) > WIDE_PIXELS else ""
        parts.append(
            f'<figure{wide}><img src="data:image/png;base64,{data}" '
            f'alt="{esc(caption, quote=True)}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
    parts.append("</div>")
    files = ", ".join(
        f'<a href="{esc(name, quote=True)}">{esc(name)}</a> ({esc(what)})'
        for name, what in DATA_FILES
    )
    plots = ", ".join(esc(name) for name in images)
    parts += [
        "<footer>",
        "<p>This page holds everything it shows: the plots are embedded in it, so it can be "
        "copied or sent alone.</p>",
        f"<p>The numbers are in files beside it in the run directory: {files}"
        + (f"; the plots also as PNG files ({plots})" if plots else "")
        + ". Those links work only where the page sits in its run directory.</p>",
        "</footer>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def png_width(png: bytes) -> int:
    """The width in pixels of a PNG (from its header; 0 for anything else)."""
    if len(png) < 24 or not png.startswith(b"\x89PNG\r\n\x1a\n"):
        return 0
    return int.from_bytes(png[16:20], "big")


def run_items(summary: Mapping[str, Any], config_yaml: str | None = None) -> list[tuple[str, Any]]:
    """The page's header: what ran, how far it got, when, where and with what code."""
    from fedkd.run.report_settings import parse_config

    config, _ = parse_config(config_yaml)
    partition: Any = summary.get("partition")
    if config is not None and isinstance(config.get("partition"), Mapping):
        partition = named(config["partition"])
    items: list[tuple[str, Any]] = [
        ("method", summary.get("strategy")),
        ("dataset", summary.get("dataset")),
        ("partition", partition),
        ("client model / student", f"{summary.get('model')} / {summary.get('student')}"),
        ("clients", summary.get("num_clients")),
        ("rounds", f"{summary.get('rounds_completed', 0)} of {summary.get('num_rounds')}"),
        ("seed", summary.get("seed")),
    ]
    if summary.get("data_seed") is not None:
        items.append(("data seed", summary["data_seed"]))
    headline = names.canonical(summary).get("headline") or {}
    metric = headline.get("metric")
    if metric and metric != names.GLOBAL_TEST:  # a method whose paper reports another model
        value = headline.get("value")
        shown = "-" if not isinstance(value, int | float) else f"{100 * value:.1f}%"
        label = names.LABELS.get(str(metric), str(metric))
        items.append(("the paper's metric", f"{label}: {shown}"))
    if summary.get("resumed_from_round") is not None:
        items.append(("resumed after round", summary["resumed_from_round"]))
    for key in ("stopped_reason", "error"):
        if summary.get(key):
            items.append((key.replace("_", " "), summary[key]))
    items += provenance.items(summary)
    return items


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
