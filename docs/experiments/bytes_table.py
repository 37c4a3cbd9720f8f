"""Communication bytes per round of every method against FedAvg, one table per client model.

Usage: python docs/experiments/bytes_table.py [--out-dir DIR] [--clients N] [--json FILE]
       [--models mlp,cnn,...] [--methods fedavg,fd,...]

Runs ``python -m simulations.run`` once per (client model, method), one run at a time, each
in a subprocess with ``backend=inline progress=false checkpoint.every=0`` and ``num_rounds=3``,
then prints, per client model, the median over rounds >= 1 of the uplink and downlink bytes
(``metrics.jsonl``) and the total relative to FedAvg on the same model.

What is fixed, and why the numbers hold beyond these short runs: the bytes a method sends
depend on the method, the client architecture(s), the number of clients (``--clients``,
default 10, every client sampled every round: ``fraction_train=1.0``), the number of classes
and the proxy size, never on the training length or the seed. So training is cut to the
minimum (``client.epochs=1``; every ``distill_epochs`` / ``digest_epochs`` a strategy yaml has
set to 1); everything else is the config default: seed 0, Dirichlet(0.5) partition,
``data.proxy_fraction=0.2`` and ``data.test_fraction=0.2`` with no ``data.proxy_size`` cap
(288 proxy rows on digits), ``proxy_round_size=0`` (the whole proxy every round), float32
encoding of shared predictions. Three rounds, not two: prediction-sharing methods send no
targets in round 1 (no consensus exists yet), so the median over rounds 1..3 is the steady
state.

Client models and their datasets: ``mlp`` and ``cnn`` on ``digits`` (8x8 images, 10 classes),
``cnn1d`` on ``mnist1d`` (sequences of 40, 10 classes), ``hetero`` (the default round-robin
mix of mlp and cnn) on ``digits``. ``cnn`` needs image inputs and ``cnn1d`` sequence inputs,
so cnn on mnist1d and cnn1d on digits are not run. The student is the client model
(``student=<model>``), or ``mlp`` for ``hetero``.

Methods: every ``configs/strategy/*.yaml``, plus FedDF with ``teacher_from=predictions``
(clients also upload their proxy predictions). ``fd`` runs with ``data.proxy_labeled=true``
(its server student needs proxy labels; the proxy size does not change). ``local_only`` and
``centralized`` share nothing; they are run too, and the table shows the 0 they measure. A
run that fails (for instance FedAvg on ``hetero``: it averages weights into one student
architecture) is shown as "n/a" with the CLI's reason. Without a FedAvg run on a model the
ratios are to FedDF (weights), which is FedAvg per architecture and sends the same bytes.

Counted as Flower's ``ArrayRecord.count_bytes`` (array payloads with their small
serialization headers, plus key names) of the training messages only: the evaluation
round's downlink (``evaluation_downlink_bytes``) and evaluation-only test predictions are not
part of a method's cost and are left out, as in ``summary.json``. 1 KB = 1000 bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
NUM_ROUNDS = 3
BASE_OVERRIDES = [
    "backend=inline",
    "progress=false",
    "checkpoint.every=0",
    f"num_rounds={NUM_ROUNDS}",
    "client.epochs=1",
]
#: Strategy keys that only lengthen training; set to 1 wherever a strategy yaml has them.
SHORTENED_KEYS = ("distill_epochs", "digest_epochs")
#: Client model -> (dataset, student) it runs with.
MODELS: dict[str, tuple[str, str]] = {
    "mlp": ("digits", "mlp"),
    "cnn": ("digits", "cnn"),
    "cnn1d": ("mnist1d", "cnn1d"),
    "hetero": ("digits", "mlp"),
}
#: Settings a method needs to run at all (not to run fast).
REQUIRED: dict[str, list[str]] = {"fd": ["data.proxy_labeled=true"]}
#: Extra rows: (label, strategy, overrides).
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("feddf (predictions)", "feddf", ["strategy.teacher_from=predictions"]),
]
#: Table order; strategies not listed follow in alphabetical order.
ORDER = [
    "fedavg",
    "feddf",
    "feddf (predictions)",
    "fedmd",
    "dsfl",
    "fedet",
    "fd",
    "fedproto",
    "local_only",
    "centralized",
]
#: Reference when a model has no FedAvg run (FedAvg per architecture: the same bytes).
FALLBACK_REFERENCE = "feddf"
INVALID = re.compile(r"fedkd: invalid configuration: (.*)")
PROXY_LOG = re.compile(r"\bproxy (\d+) \(")


@dataclass
class Method:
    """One row of a table: a strategy with the overrides it runs with."""

    label: str
    strategy: str
    overrides: list[str]
    note: str = ""  # the non-default settings it needs, shown in the table


@dataclass
class Result:
    """What one run measured (``status`` "ok") or why it has no numbers ("n/a")."""

    model: str
    dataset: str
    method: str
    note: str
    command: list[str]
    run_dir: str
    status: str = "n/a"
    reason: str = ""
    uplink_bytes: list[int] = field(default_factory=list)  # per round >= 1
    downlink_bytes: list[int] = field(default_factory=list)
    clients_ok: list[int] = field(default_factory=list)
    uplink_per_round: float | None = None  # medians over the rounds
    downlink_per_round: float | None = None
    student_parameters: int | None = None
    proxy_rows: int | None = None
    seconds: float = 0.0

    @property
    def total(self) -> float | None:
        """Uplink plus downlink per round, when measured."""
        if self.uplink_per_round is None or self.downlink_per_round is None:
            return None
        return self.uplink_per_round + self.downlink_per_round


def methods(selected: set[str] | None = None) -> list[Method]:
    """Every strategy in ``configs/strategy`` (and the variants), in table order.

    Each gets ``client.epochs=1`` through :data:`BASE_OVERRIDES` and 1 for each of the
    :data:`SHORTENED_KEYS` its yaml defines, plus what :data:`REQUIRED` lists for it.
    """
    found: dict[str, Method] = {}
    for path in sorted((REPO / "configs" / "strategy").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        name = path.stem
        shorten = [f"strategy.{key}=1" for key in SHORTENED_KEYS if key in spec]
        required = REQUIRED.get(name, [])
        found[name] = Method(
            name, name, [f"strategy={name}", *shorten, *required], note=" ".join(required)
        )
    for label, strategy, extra in VARIANTS:
        if strategy in found:
            base = found[strategy]
            note = " ".join(filter(None, [base.note, *extra]))
            found[label] = Method(label, strategy, [*base.overrides, *extra], note=note)
    rank = {label: i for i, label in enumerate(ORDER)}
    ordered = sorted(found.values(), key=lambda m: (rank.get(m.label, len(ORDER)), m.label))
    if selected is not None:
        ordered = [m for m in ordered if m.label in selected or m.strategy in selected]
    return ordered


def _median(values: list[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _failure_reason(output: str, returncode: int) -> str:
    """The CLI's one-line config error, else the last line of its output."""
    for line in output.splitlines():
        match = INVALID.search(line)
        if match:
            return match.group(1).strip()
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return f"exit {returncode}: {lines[-1][:300] if lines else 'no output'}"


def measure(model: str, method: Method, clients: int, run_dir: Path) -> Result:
    """Run one simulation in a subprocess and read its per-round bytes."""
    dataset, student = MODELS[model]
    overrides = [
        *BASE_OVERRIDES,
        f"num_clients={clients}",
        f"dataset={dataset}",
        f"model={model}",
        f"student={student}",
        *method.overrides,
        f"hydra.run.dir={run_dir}",
    ]
    command = [sys.executable, "-m", "simulations.run", *overrides]
    result = Result(model, dataset, method.label, method.note, command, str(run_dir))
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    result.seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        result.reason = _failure_reason(output, proc.returncode)
        return result
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("status") != "completed":
        result.reason = f"run {summary.get('status')}: {summary.get('error', '')}".strip()
        return result
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    rounds = [r for r in rows if r.get("round", 0) >= 1]
    if len(rounds) != NUM_ROUNDS:
        result.reason = f"{len(rounds)} of {NUM_ROUNDS} rounds in metrics.jsonl"
        return result
    result.uplink_bytes = [int(r.get("uplink_bytes", 0)) for r in rounds]
    result.downlink_bytes = [int(r.get("downlink_bytes", 0)) for r in rounds]
    result.clients_ok = [int(r.get("clients_ok", 0)) for r in rounds]
    result.uplink_per_round = _median(result.uplink_bytes)
    result.downlink_per_round = _median(result.downlink_bytes)
    result.student_parameters = summary.get("parameters")
    log = run_dir / "run.log"
    match = PROXY_LOG.search(log.read_text()) if log.is_file() else None
    result.proxy_rows = int(match.group(1)) if match else None
    result.status = "ok"
    failed = sum(int(r.get("clients_failed", 0)) for r in rounds)
    if failed or any(r.get("skipped") for r in rounds):
        result.reason = f"{failed} client failures / skipped rounds: bytes undercounted"
    return result


def _short(reason: str, limit: int = 160) -> str:
    """A failure reason for a table cell: without dumps of config mappings, and cut short."""
    reason = re.sub(r"\s*\([^()]*\{.*\}\)", "", reason).replace("|", "\\|").strip()
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def _kb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1000:,.1f}"


def _reference(results: list[Result]) -> Result | None:
    """FedAvg on this model, else the fallback reference, when it ran and sent something."""
    for label in ("fedavg", FALLBACK_REFERENCE):
        for r in results:
            if r.method == label and r.status == "ok" and r.total:
                return r
    return None


def table(model: str, results: list[Result], clients: int) -> str:
    """The Markdown table of one client model."""
    dataset, student = MODELS[model]
    reference = _reference(results)
    proxy = next((r.proxy_rows for r in results if r.proxy_rows is not None), None)
    parameters = next(
        (r.student_parameters for r in results if r.method == "fedavg" and r.status == "ok"),
        None,
    )
    facts = [f"dataset {dataset}", f"{clients} clients", f"student {student}"]
    if parameters is not None:
        facts.append(f"{parameters:,} parameters")
    if proxy is not None:
        facts.append(f"proxy {proxy} rows")
    ratio_header = "total × FedAvg"
    if reference is not None and reference.method != "fedavg":
        ratio_header = f"total × {reference.method}"
    lines = [
        f"**{model}** ({', '.join(facts)})",
        "",
        f"| method | uplink / round (KB) | downlink / round (KB) | {ratio_header} | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(f"| {r.method} | n/a | n/a | n/a | {_short(r.reason)} |")
            continue
        total = r.total or 0.0
        ratio = "n/a" if reference is None else f"{total / (reference.total or 1.0):.2f}"
        notes = [f"`{r.note}`" if r.note else "", _short(r.reason)]
        if total == 0:
            notes.append("shares nothing")
        note = "; ".join(n for n in notes if n)
        lines.append(
            f"| {r.method} | {_kb(r.uplink_per_round)} | {_kb(r.downlink_per_round)} "
            f"| {ratio} | {note} |"
        )
    if reference is not None and reference.method != "fedavg":
        lines += [
            "",
            f"No FedAvg run on {model}; ratios are to {reference.method} (weights), which is "
            "FedAvg per architecture and sends the same bytes.",
        ]
    return "\n".join(lines)


def _names(text: str | None) -> set[str] | None:
    return None if text is None else {name.strip() for name in text.split(",") if name.strip()}


def _slug(label: str) -> str:
    """A run directory name for a row label: ``feddf (predictions)`` -> ``feddf-predictions``."""
    return re.sub(r"[^\w]+", "-", label).strip("-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="run dirs (default: temp)")
    parser.add_argument("--clients", type=int, default=10, help="num_clients (default 10)")
    parser.add_argument("--json", type=Path, default=None, help="save the raw numbers here")
    parser.add_argument("--models", default=None, help=f"subset of {','.join(MODELS)}")
    parser.add_argument("--methods", default=None, help="subset of the strategies (labels)")
    args = parser.parse_args()
    if args.clients < 1:
        parser.error("--clients must be >= 1")
    wanted = _names(args.models)
    models = [m for m in MODELS if wanted is None or m in wanted]
    rows = methods(_names(args.methods))
    if not models or not rows:
        parser.error("no model or no method selected")
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="fedkd-bytes-"))
    existing = [out / m / _slug(r.label) for m in models for r in rows]
    if any(path.exists() for path in existing):
        parser.error(f"{out} already holds run directories of this script; use a fresh --out-dir")

    argv = ["python", "docs/experiments/bytes_table.py", *sys.argv[1:]]
    if args.out_dir is None:
        argv += ["--out-dir", str(out)]
    print(f"`{shlex.join(argv)}`", flush=True)
    print("", flush=True)

    start = time.perf_counter()
    results: list[Result] = []
    for model in models:
        for method in rows:
            result = measure(model, method, args.clients, out / model / _slug(method.label))
            print(
                f"{model:>6} {method.label:<20} {result.status:<3} {result.seconds:5.1f} s "
                f"{result.reason}",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    elapsed = time.perf_counter() - start

    for model in models:
        print(table(model, [r for r in results if r.model == model], args.clients))
        print("")
    print(
        f"{len(results)} runs of {NUM_ROUNDS} rounds in {elapsed / 60:.1f} min; medians over "
        "rounds >= 1; training messages only (no evaluation traffic); 1 KB = 1000 bytes; "
        f"run directories in {out}."
    )
    if args.json is not None:
        payload: dict[str, Any] = {
            "command": argv,
            "clients": args.clients,
            "num_rounds": NUM_ROUNDS,
            "base_overrides": BASE_OVERRIDES,
            "seconds": elapsed,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
