"""Privacy-utility table and plot from the runs of docs/experiments/privacy_sweep.sh.

Usage: python docs/experiments/privacy_table.py OUT_DIR [--plot FILE.png]
Prints a markdown table per preset: mechanism, noise, the record-level and client-level
epsilon (delta), the canary audit's empirical lower bound on epsilon, student and teacher
ensemble test accuracy ("-" where a mechanism withholds the clients' test predictions), and
the membership-inference AUC of both attacks on the student and (mean over the audited
clients) on the client models. A binary preset (finance, healthcare)
adds the student's balanced accuracy and ROC-AUC; every table starts with the majority-class
baseline (always predicting the training data's most frequent class).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from table_cli import parse_out_dir, save_figure


def _noise(privacy: dict[str, Any]) -> str:
    if privacy.get("mechanism") == "pate":
        return f"sigma={privacy['sigma']:g}"
    if "noise_multiplier" in privacy:
        return f"z={privacy['noise_multiplier']:g}"
    return "-"


def _auc(audit: dict[str, Any], target: str, attack: str) -> float | None:
    if target == "clients":
        values = [
            attacks[attack]["auc"]
            for name, attacks in audit.get("targets", {}).items()
            if name.startswith("client-") and attack in attacks
        ]
        return sum(values) / len(values) if values else None
    result = audit.get("targets", {}).get(target, {}).get(attack)
    return None if result is None else result["auc"]


def _level(run: str) -> float:
    """The noise level in a run name such as ``pate_16`` (for sorting)."""
    try:
        return float(run.rsplit("_", 1)[-1])
    except ValueError:
        return 0.0


def _fmt(values: list[float | None], pct: bool = False, spread: bool = True) -> str:
    """Mean (± std over seeds when there are several and ``spread``)."""
    clean = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not clean:
        return "-"
    scale = 100.0 if pct else 1.0
    mean = scale * sum(clean) / len(clean)
    text = f"{mean:.1f}" if pct else f"{mean:.3g}" if mean >= 10 else f"{mean:.2f}"
    if len(clean) > 1 and spread:
        std = scale * statistics.stdev(clean)
        text += f" ± {std:.1f}" if pct else f" ± {std:.2f}"
    return text + (" %" if pct else "")


def rows(out: Path) -> list[dict[str, Any]]:
    """One row per (preset, run name), values listed over seeds."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(out.glob("seed*/*/*/summary.json")):
        summary = json.loads(path.read_text())
        privacy = summary.get("privacy", {})
        audit = privacy.get("audit", {})
        key = (path.parent.parent.name, path.parent.name)
        row = grouped.setdefault(
            key,
            {
                "preset": key[0],
                "run": key[1],
                "method": summary["strategy"],
                "mechanism": privacy.get("mechanism", "none")
                + (f" ({privacy['mode']})" if "mode" in privacy else ""),
                "noise": _noise(privacy),
                "seeds": 0,
            },
        )
        row["seeds"] += 1
        baseline = summary.get("majority_baseline")
        if baseline:  # the same for every run of a seed: kept once per seed
            row.setdefault("majority", {})[path.parent.parent.parent.name] = baseline
        values = {
            "epsilon": privacy.get("epsilon"),
            "epsilon_client": privacy.get("epsilon_client"),
            "canary": audit.get("epsilon_lower_bound"),
            "student": summary["final"].get("student_accuracy"),
            "student_bal": summary["final"].get("student_balanced_accuracy"),
            "student_auc": summary["final"].get("student_auc"),
            "ensemble": summary["final"].get("ensemble_accuracy"),
            "clients": summary["final"].get("client_accuracy_mean"),
            "auc_student_loss": _auc(audit, "student", "loss"),
            "auc_student_lira": _auc(audit, "student", "lira"),
            "auc_clients_loss": _auc(audit, "clients", "loss"),
            "auc_clients_lira": _auc(audit, "clients", "lira"),
        }
        for name, value in values.items():
            row.setdefault(name, []).append(value)
    return list(grouped.values())


def _majority_row(selected: list[dict[str, Any]], *, binary: bool) -> str | None:
    """The majority-class baseline's row of a preset's table (one value per seed), or None
    when the runs predate ``majority_baseline``."""
    per_seed: dict[str, dict[str, Any]] = {}
    for r in selected:
        for seed, baseline in r.get("majority", {}).items():
            per_seed.setdefault(seed, baseline)
    if not per_seed:
        return None
    baselines = list(per_seed.values())
    classes = sorted({b["class"] for b in baselines})
    cells = [
        f"majority class ({', '.join(map(str, classes))})",
        "-",
        "-",
        "-",
        "-",
        _fmt([b.get("accuracy") for b in baselines], True),
    ]
    if binary:
        cells += [
            _fmt([b.get("balanced_accuracy") for b in baselines], True),
            _fmt([b.get("auc") for b in baselines]),
        ]
    cells += ["-", "-", "-", "-"]
    return "| " + " | ".join(cells) + " |"


def table(found: list[dict[str, Any]]) -> str:
    lines = []
    for preset in sorted({r["preset"] for r in found}):
        seeds = max(r["seeds"] for r in found if r["preset"] == preset)
        order = {"none": 0, "dpsgd": 1, "logit_dp (central)": 2, "logit_dp (local)": 3, "pate": 4}
        selected = sorted(
            (r for r in found if r["preset"] == preset),
            key=lambda r: (order.get(r["mechanism"], 9), r["method"], _level(r["run"])),
        )
        # a binary task: accuracy alone flatters a skewed one (finance: 78 % for "no default")
        binary = any(v is not None for r in selected for v in r["student_bal"])
        lines += [
            f"**{preset}** ({seeds} seeds, mean ± std)",
            "",
            "| method | mechanism | noise | ε record / client (δ = 1e-5) | canary ε ≥ "
            "| student acc "
            + ("| student bal. acc | student AUC " if binary else "")
            + "| ensemble acc "
            "| client acc | MIA AUC student (loss / LiRA) | MIA AUC clients (loss / LiRA) |",
            "|---|---|---|---:|---:|---:|"
            + ("---:|---:|" if binary else "")
            + "---:|---:|---:|---:|",
        ]
        baseline = _majority_row(selected, binary=binary)
        if baseline is not None:
            lines.append(baseline)
        for r in selected:
            eps = (
                "∞"
                if all(e is None for e in r["epsilon"])
                else f"{_fmt(r['epsilon'], spread=False)} / "
                + (
                    "not bounded"
                    if all(e is None for e in r["epsilon_client"])
                    else _fmt(r["epsilon_client"], spread=False)
                )
            )
            scores = (
                f"| {_fmt(r['student_bal'], True)} | {_fmt(r['student_auc'])} " if binary else ""
            )
            lines.append(
                f"| {r['method']} | {r['mechanism']} | {r['noise']} | {eps} "
                f"| {_fmt(r['canary'])} "
                f"| {_fmt(r['student'], True)} {scores}| {_fmt(r['ensemble'], True)} "
                f"| {_fmt(r['clients'], True)} "
                f"| {_fmt(r['auc_student_loss'])} / {_fmt(r['auc_student_lira'])} "
                f"| {_fmt(r['auc_clients_loss'])} / {_fmt(r['auc_clients_lira'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def _mean(values: list[float | None]) -> float | None:
    clean = [v for v in values if isinstance(v, int | float)]
    return sum(clean) / len(clean) if clean else None


def plot(found: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    presets = sorted({r["preset"] for r in found if r["preset"] not in ("overfit", "canary")})
    fig = Figure(figsize=(5.5 * len(presets), 4.2))
    for i, preset in enumerate(presets):
        ax = fig.add_subplot(1, len(presets), i + 1)
        binary = any(_mean(r["student_bal"]) for r in found if r["preset"] == preset)
        metric = "student_bal" if binary else "student"
        for mechanism, marker in (
            ("logit_dp (central)", "o"),
            ("logit_dp (local)", "v"),
            ("pate", "s"),
            ("dpsgd", "^"),
        ):
            points = sorted(
                (_mean(r["epsilon"]), _mean(r[metric]))
                for r in found
                if r["preset"] == preset and r["mechanism"] == mechanism and _mean(r[metric])
            )
            if points:
                ax.plot(
                    [p[0] for p in points], [p[1] for p in points], marker=marker, label=mechanism
                )
        for r in found:
            accuracy = _mean(r[metric])
            if r["preset"] == preset and r["mechanism"] == "none" and accuracy:
                ax.axhline(accuracy, linestyle="--", linewidth=1, color="grey")
                ax.annotate(
                    f"no DP ({r['method']})",
                    (0.01, accuracy),
                    xycoords=("axes fraction", "data"),
                    fontsize=7,
                    va="bottom",
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("record-level ε (δ = 1e-5)")
        ax.set_ylabel("student balanced accuracy" if binary else "student test accuracy")
        ax.set_title(preset)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> int:
    parser, args = parse_out_dir(__doc__)
    found = rows(args.out)
    if not found:
        parser.error(f"no seed*/*/*/summary.json under {args.out}")
    print(table(found))
    if args.plot:
        plot(found, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
