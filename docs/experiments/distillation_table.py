"""Print the Markdown tables of docs/DISTILLATION.md from the runs of distillation_mnist1d.sh.

Usage: python docs/experiments/distillation_table.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.report import find_runs, load_run, method_of


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def main(out_dir: Path) -> None:
    for part in ("table", "large_proxy", "sweep"):
        print(f"\n### {part}\n")
        print(
            "| run | method | clients -> student | student (final) | student (best) "
            "| validation (final) | ensemble | uplink per round |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for run_dir in find_runs([out_dir / part]):
            run = load_run(run_dir)
            final, best = run["final"], run.get("best", {})
            rounds = max(run["rounds_completed"], 1)
            uplink = run.get("communication", {}).get("uplink_bytes", 0) / rounds
            print(
                f"| {run_dir.name} | {method_of(run)} | {run['model']} -> {run['student']} "
                f"| {_pct(final.get('student_accuracy'))} "
                f"| {_pct((best.get('student_accuracy') or {}).get('value'))} "
                f"| {_pct(final.get('student_validation_accuracy'))} "
                f"| {_pct(final.get('ensemble_accuracy'))} | {uplink / 1e3:.0f} KB |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "multirun/distillation_mnist1d"))
