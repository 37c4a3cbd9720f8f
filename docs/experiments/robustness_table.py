"""Robustness tables and plot from the runs of docs/experiments/robustness_sweep.sh.

Usage: python docs/experiments/robustness_table.py OUT_DIR [--plot FILE.png]
Runs are ``OUT_DIR/seed*/<attack kind>/<rule>_<fraction>``. For each attack swept over
several fractions (sign_flip, targeted) it prints markdown tables (rows: teacher-target
rule, columns: malicious fraction; final student test accuracy, final teacher-ensemble test
accuracy and the best round's student accuracy, mean ± std over seeds); fraction 0 (no
attacker) is the sign_flip block's run of the same rule and seed, shared by every attack.
The other attacks (random, scale) get one table with the clients rejected per round and
why. Runs that did not complete, or rejected replies in the swept blocks, are listed below
the tables. The plot shows the final student accuracy against the malicious fraction, one
line per rule (error bars: std over seeds), one panel per swept attack.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from table_cli import parse_out_dir, save_figure

#: Rule labels of the sweep (directory names) in table order, with what they mean.
RULES = {
    "mean": "mean",
    "median": "median",
    "trimmed_mean": "trimmed_mean (trim 0.2)",
    "trimmed_mean_t45": "trimmed_mean (trim 0.45)",
    "robust_mean": "robust_mean (threshold 0.05)",
    "robust_mean_th0.2": "robust_mean (threshold 0.2, default)",
    "support_filter": "support_filter (threshold 0.5, default)",
}


def _fmt(values: list[float | None]) -> str:
    """Percent mean (± sample std over seeds when there are several)."""
    clean = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not clean:
        return "-"
    text = f"{100 * sum(clean) / len(clean):.1f}"
    if len(clean) > 1:
        text += f" ± {100 * statistics.stdev(clean):.1f}"
    return text


def _read_run(path: Path) -> dict[str, Any]:
    """One run: its summary plus what its metrics.jsonl says about rejected replies."""
    summary = json.loads(path.read_text())
    rounds = []
    metrics = path.parent / "metrics.jsonl"
    if metrics.is_file():
        rounds = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rounds = [r for r in rounds if r.get("round", 0) >= 1]
    reasons: Counter[str] = Counter()
    for r in rounds:
        reasons.update(r.get("failure_reasons") or {})
    best = summary.get("best", {}).get("student_accuracy", {})
    return {
        "dir": path.parent,
        "seed": summary.get("seed"),
        "status": summary.get("status"),
        "complete": summary.get("status") == "completed"
        and summary.get("rounds_completed") == summary.get("num_rounds"),
        "num_clients": summary.get("num_clients"),
        "student": summary.get("final", {}).get("student_accuracy"),
        "ensemble": summary.get("final", {}).get("ensemble_accuracy"),
        "best": best.get("value"),
        "best_round": best.get("round"),
        "failed_per_round": (
            sum(int(r.get("clients_failed", 0)) for r in rounds) / len(rounds) if rounds else None
        ),
        "ok_per_round": (
            sum(int(r.get("clients_ok", 0)) for r in rounds) / len(rounds) if rounds else None
        ),
        "reasons": reasons,
        "wall_seconds": summary.get("wall_seconds"),
    }


def _split(name: str) -> tuple[str, float] | None:
    """``trimmed_mean_t45_0.3`` -> (``trimmed_mean_t45``, 0.3)."""
    label, _, fraction = name.rpartition("_")
    try:
        return label, float(fraction)
    except ValueError:
        return None


Block = dict[tuple[str, float], list[dict]]
BASELINE = "sign_flip"  # its fraction-0 runs (no attacker) serve every attack


def collect(out: Path) -> tuple[dict[str, Block], dict[tuple, list[dict]]]:
    """Swept attacks: kind -> (rule, fraction) -> runs; other attacks by (kind, rule,
    fraction)."""
    by_kind: dict[str, Block] = {}
    for path in sorted(out.glob("seed*/*/*/summary.json")):
        key = _split(path.parent.name)
        if key:
            by_kind.setdefault(path.parent.parent.name, {}).setdefault(key, []).append(
                _read_run(path)
            )
    swept = {k: v for k, v in by_kind.items() if len({f for _, f in v}) >= 3}
    other = {
        (kind, *key): runs
        for kind, block in by_kind.items()
        if kind not in swept
        for key, runs in block.items()
    }
    baseline = swept.get(BASELINE, {})
    for block in swept.values():
        for (label, fraction), runs in list(baseline.items()):
            if fraction == 0 and any(r == label for r, _ in block):
                block.setdefault((label, 0.0), runs)
    return swept, other


def _rule_order(label: str) -> tuple[int, str]:
    order = list(RULES)
    return (order.index(label) if label in order else len(order), label)


def main_tables(main: Block, kind: str) -> str:
    fractions = sorted({f for _, f in main})
    labels = sorted({r for r, _ in main}, key=_rule_order)
    runs = [run for group in main.values() for run in group]
    seeds = sorted({run["seed"] for run in runs})
    clients = max(run["num_clients"] or 0 for run in runs)
    head = [f"{f:g} ({round(f * clients)}/{clients})" for f in fractions]
    lines: list[str] = []
    for key, title in (
        ("student", "Final student test accuracy (%)"),
        (
            "ensemble",
            "Final teacher-ensemble test accuracy (%), the rule applied to the "
            "clients' test-set predictions",
        ),
        ("best", "Best round's student test accuracy (%)"),
    ):
        lines += [
            f"**{title}**, {kind}, seeds {', '.join(map(str, seeds))} (mean ± std)",
            "",
            "| rule \\ malicious | " + " | ".join(head) + " |",
            "|---|" + "---:|" * len(fractions),
        ]
        for label in labels:
            cells = []
            for f in fractions:
                group = main.get((label, f), [])
                cell = _fmt([run[key] for run in group])
                if any(not run["complete"] for run in group):
                    cell += " †"
                if group and len(group) < len(seeds):
                    cell += f" ({len(group)} seed{'s' if len(group) > 1 else ''})"
                cells.append(cell)
            lines.append(f"| {RULES.get(label, label)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def other_table(other: dict[tuple, list[dict]]) -> str:
    seeds = sorted({run["seed"] for group in other.values() for run in group})
    lines = [
        f"**Other attacks**, seeds {', '.join(map(str, seeds))} (mean over seeds)",
        "",
        "| attack | rule | malicious | student acc (%) | ensemble acc (%) "
        "| replies accepted / rejected per round | rejection reasons (total) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for (kind, label, fraction), group in sorted(
        other.items(), key=lambda item: (item[0][0], _rule_order(item[0][1]), item[0][2])
    ):
        clients = group[0]["num_clients"] or 0
        ok = statistics.mean(r["ok_per_round"] for r in group if r["ok_per_round"] is not None)
        failed = statistics.mean(
            r["failed_per_round"] for r in group if r["failed_per_round"] is not None
        )
        reasons: Counter[str] = Counter()
        for run in group:
            reasons.update(run["reasons"])
        why = "; ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items())) or "-"
        mark = " †" if any(not run["complete"] for run in group) else ""
        lines.append(
            f"| {kind} | {RULES.get(label, label)} | {fraction:g} ({round(fraction * clients)}"
            f"/{clients}) | {_fmt([r['student'] for r in group])}{mark} "
            f"| {_fmt([r['ensemble'] for r in group])} | {ok:.1f} / {failed:.1f} | {why} |"
        )
    lines.append("")
    return "\n".join(lines)


def notes(swept: dict[str, Block], other: dict[tuple, list[dict]]) -> str:
    main = {(kind, *key): runs for kind, block in swept.items() for key, runs in block.items()}
    unique = {id(run): run for group in [*main.values(), *other.values()] for run in group}
    runs = list(unique.values())
    lines = []
    for run in runs:
        if not run["complete"]:
            lines.append(f"† {run['dir']}: status {run['status']}")
    for run in {id(r): r for group in main.values() for r in group}.values():
        if run["reasons"]:
            lines.append(f"rejected replies in {run['dir']}: {dict(run['reasons'])}")
    walls = [run["wall_seconds"] for run in runs if isinstance(run["wall_seconds"], int | float)]
    lines.append(
        f"{len(runs)} runs, {sum(r['complete'] for r in runs)} completed; run time "
        f"{min(walls):.0f}-{max(walls):.0f} s (median {statistics.median(walls):.0f} s)"
        if walls
        else f"{len(runs)} runs"
    )
    return "\n".join(lines)


def _mean_std(values: list[float | None]) -> tuple[float, float] | None:
    clean = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not clean:
        return None
    return statistics.mean(clean), statistics.stdev(clean) if len(clean) > 1 else 0.0


def plot(swept: dict[str, Block], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    kinds = sorted(swept, key=lambda k: (k != BASELINE, k))
    fig = Figure(figsize=(5 * len(kinds), 4.2))
    axes = [fig.add_subplot(1, len(kinds), i + 1) for i in range(len(kinds))]
    markers = dict(zip(RULES, "osv^DPX", strict=True))
    colors = {label: f"C{i}" for i, label in enumerate(RULES)}  # the same rule, the same colour
    for ax, kind in zip(axes, kinds, strict=True):
        main = swept[kind]
        fractions = sorted({f for _, f in main})
        labels = sorted({r for r, _ in main}, key=_rule_order)
        for i, label in enumerate(labels):
            points = [
                (f, stats)
                for f in fractions
                if (stats := _mean_std([run["student"] for run in main.get((label, f), [])]))
            ]
            if not points:
                continue
            offset = (i - (len(labels) - 1) / 2) * 0.006  # keep error bars apart
            ax.errorbar(
                [f + offset for f, _ in points],
                [s[0] for _, s in points],
                yerr=[s[1] for _, s in points],
                marker=markers.get(label, "o"),
                color=colors.get(label),
                capsize=3,
                label=RULES.get(label, label),
            )
        ax.set_xticks(fractions)
        ax.set_xlabel(f"malicious fraction ({kind})")
        ax.set_ylabel("student test accuracy (final round)")
        ax.set_ylim(0, 1)
        ax.set_title(f"attack: {kind}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, path)


def main() -> int:
    parser, args = parse_out_dir(__doc__)
    swept, other_runs = collect(args.out)
    if not swept:
        parser.error(f"no seed*/<kind>/<rule>_<fraction>/summary.json sweep under {args.out}")
    for kind in sorted(swept, key=lambda k: (k != BASELINE, k)):
        print(main_tables(swept[kind], kind))
    if other_runs:
        print(other_table(other_runs))
    print(notes(swept, other_runs))
    if args.plot:
        plot(swept, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
