"""docs/BENCHMARKS.md's table from the JSON files of ``python -m simulations.bench``.

Usage: python docs/experiments/bench_table.py FILE.json|DIR [...]
Prints one markdown row per workload, backend (and Ray engine) and N, ordered by workload
(default, tiny, reference), backend (inline, batched, ray_cpu with fedkd's engine, then
Flower's) and N, then each file's import floor. A directory stands for its ``*.json``
files that hold ``results``; a path that does not exist is left out with a warning. Files
written before the harness measured several backends (no ``backend`` per result, no
workload name, no ``outputs_seconds``) are read too: their workload is told by its records
per client (20: tiny), their engine by the ``backend.engine=`` in their overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

WORKLOAD_ORDER = ("default", "tiny", "reference")
BACKEND_ORDER = ("inline", "batched", "ray_cpu (fedkd)", "ray_cpu (flower)")
HEADER = (
    "| workload | backend/engine | N | sim s/round | plain s/round | ratio | start-up s "
    "| outputs s | peak RSS | uplink MB/round | same result |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def _workload_name(workload: dict[str, Any]) -> str:
    if "name" in workload:
        return str(workload["name"])
    return "tiny" if workload.get("samples_per_client") == 20 else "default"


def _backend_label(result: dict[str, Any], workload: dict[str, Any]) -> str:
    """``inline``, ``batched``, ``ray_cpu (fedkd)``, ``ray_cpu (flower)``, ..."""
    backend = result.get("backend") or str(workload.get("backend", "ray_cpu"))
    engine = result.get("engine") if "backend" in result else None
    if "backend" not in result and backend.startswith("ray"):  # an old file
        engine = "fedkd"
        for override in workload.get("overrides", []):
            if override.startswith("backend.engine="):
                engine = override.split("=", 1)[1]
    return backend if engine is None else f"{backend} ({engine})"


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows of one JSON report (as dicts, with sort keys)."""
    workload = report.get("workload", {})
    name = _workload_name(workload)
    out = []
    for result in report.get("results", []):
        label = _backend_label(result, workload)
        out.append(
            {
                "workload": name,
                "backend": label,
                "clients": int(result["clients"]),
                "result": result,
                "key": (
                    WORKLOAD_ORDER.index(name) if name in WORKLOAD_ORDER else len(WORKLOAD_ORDER),
                    BACKEND_ORDER.index(label) if label in BACKEND_ORDER else len(BACKEND_ORDER),
                    label,
                    int(result["clients"]),
                ),
            }
        )
    return out


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _seconds_per_round(value: float) -> str:
    """Three significant figures, without exponent notation."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def markdown_row(row: dict[str, Any]) -> str:
    """One line of the table."""
    result = row["result"]
    head = f"| {row['workload']} | {row['backend']} | {row['clients']} |"
    if "error" in result:
        return head + " failed | | | | | | | |"
    rss = result.get("peak_rss_bytes")
    uplink = result.get("uplink_bytes_per_round")
    same = result.get("same_result")
    return (
        f"{head} {_seconds_per_round(result['sim_seconds_per_round'])} "
        f"| {_seconds_per_round(result['plain_seconds_per_round'])} "
        f"| {result['ratio']:.2f} "
        f"| {_num(result.get('startup_seconds'), 1)} "
        f"| {_num(result.get('outputs_seconds'), 1)} "
        f"| {'-' if rss is None else f'{rss / 2**30:.2f} GiB'} "
        f"| {'-' if uplink is None else f'{uplink / 1e6:.2f}'} "
        f"| {'-' if same is None else ('yes' if same else '**no**')} |"
    )


def table(reports: dict[str, dict[str, Any]]) -> str:
    """The markdown table of every report, then the import floors (file name: seconds)."""
    all_rows = sorted(
        (r for report in reports.values() for r in rows(report)), key=lambda r: r["key"]
    )
    lines = [HEADER, *(markdown_row(r) for r in all_rows)]
    floors = [
        f"{name} {report['import_floor_seconds']:.2f} s"
        for name, report in reports.items()
        if report.get("import_floor_seconds") is not None
    ]
    if floors:
        lines += [
            "",
            'Import floor (`python -c "import torch"`, median of 3): ' + ", ".join(floors),
        ]
    return "\n".join(lines)


def load(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """The reports in ``paths`` (files, or directories of ``*.json``), by file name."""
    reports: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not path.exists():  # a bench that crashed before writing: say so, go on
            print(f"bench_table: {path} does not exist; left out", file=sys.stderr)
            continue
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            report = json.loads(file.read_text())
            if isinstance(report, dict) and "results" in report:
                reports[file.name] = report
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="bench JSON files or directories")
    args = parser.parse_args()
    reports = load(args.paths)
    if not reports:
        parser.error("no bench results in the given paths")
    print(table(reports))


if __name__ == "__main__":
    main()
