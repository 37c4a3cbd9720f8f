"""The tables of docs/RESULTS.md "The research goal" from research_goal.sh's run directories.

python docs/experiments/research_table.py results/research_goal
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _final(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    rounds = max(1, summary.get("rounds_completed") or 1)
    clients = max(1, summary.get("num_clients") or 1)
    uplink = summary["communication"]["uplink_bytes"] / rounds / clients
    return {**final, "uplink": uplink, "status": summary["status"]}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def validation(root: Path) -> list[str]:
    """One row per lever tried on the validation federation."""
    runs = sorted(p for p in (root / "validation").iterdir() if (p / "summary.json").is_file())
    finals = {run.name: _final(run) for run in runs}
    base = finals.get("fedavg", {}).get("uplink")
    lines = [
        "| run (data_seed 1) | student | clients (global test) | ensemble "
        "| uplink / client / round |",
        "|---|---|---|---|---|",
    ]
    for name, final in finals.items():
        ratio = f" ({base / final['uplink']:.1f}x fewer)" if base and final["uplink"] < base else ""
        lines.append(
            f"| {name} | {_pct(final.get('student_accuracy'))} | "
            f"{_pct(final.get('client_accuracy_mean'))} | {_pct(final.get('ensemble_accuracy'))} "
            f"| {final['uplink'] / 1000:.1f} KB{ratio} |"
        )
    return lines


def test(root: Path) -> list[str]:
    """The chosen setting against FedAvg on the reference federation, mean ± std."""
    groups: dict[str, list[dict]] = {}
    for run in sorted((root / "test").iterdir()):
        if (run / "summary.json").is_file():
            groups.setdefault(run.name.rsplit("_s", 1)[0], []).append(_final(run))
    lines = [
        "| method (data_seed 0) | seeds | student | clients (global test) "
        "| uplink / client / round |",
        "|---|---|---|---|---|",
    ]
    for name, finals in groups.items():
        cells = []
        for key in ("student_accuracy", "client_accuracy_mean"):
            values = [100 * f[key] for f in finals if f.get(key) is not None]
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.1f}{spread}" if values else "–")
        uplink = statistics.fmean(f["uplink"] for f in finals) / 1000
        lines.append(f"| {name} | {len(finals)} | {cells[0]} | {cells[1]} | {uplink:.1f} KB |")
    return lines


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "results/research_goal")
    print("\n".join(validation(root)))
    print()
    print("\n".join(test(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
