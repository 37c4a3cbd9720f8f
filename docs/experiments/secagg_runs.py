"""Secure aggregation in whole runs: bytes and time against plain aggregation (issue 22).

FedMD on digits (the default run's data and models), in-process engine, ``--rounds``
rounds, at 10 and 100 clients, with 0 %, 10 % and 30 % of the clients crashing each round
after the keys were shared (``faults.crash_fraction``: they drop out of the secure sum),
each with ``secagg.enabled`` false and true, alternating so that both see the same machine
load. Prints and writes a markdown table; the numbers in docs/PRIVACY.md come from it::

    python docs/experiments/secagg_runs.py --out docs/experiments/secagg_runs.md

Bytes are per client and round: ``uplink_bytes`` (the method's upload: the masked sum under
secure aggregation) plus the protocol's own messages (``secagg_uplink_bytes``: public keys,
encrypted shares, unmasking shares; ``secagg_downlink_bytes``: neighbours' keys, routed
shares, unmask requests). Time is the rounds' wall time (``summary.json``
``rounds_seconds``) and the server's share in the protocol (``secagg_seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTPUT = "docs/experiments/secagg_runs.md"


def run(
    clients: int, crash: float, secure: bool, rounds: int, out: Path, extra: list[str]
) -> dict[str, float]:
    """One run (``extra``: overrides of the secure run only); its per-client-and-round
    bytes and its timing."""
    if out.exists():
        shutil.rmtree(out)
    command = [
        sys.executable, "-m", "simulations.run", "backend=inline", "strategy=fedmd",
        f"num_clients={clients}", f"num_rounds={rounds}", f"faults.crash_fraction={crash}",
        f"secagg.enabled={str(secure).lower()}", "progress=false", "report.html=false",
        "report.export=false", "checkpoint.every=0", f"hydra.run.dir={out}",
        *(extra if secure else []),
    ]  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=3600)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    summary = json.loads((out / "summary.json").read_text())
    sampled = sum(r["clients_sampled"] for r in rows)
    ok = sum(r["clients_ok"] for r in rows)
    return {
        "up": sum(r["uplink_bytes"] for r in rows) / max(ok, 1),
        "down": sum(r["downlink_bytes"] for r in rows) / sampled,
        "proto_up": sum(r.get("secagg_uplink_bytes", 0) for r in rows) / sampled,
        "proto_down": sum(r.get("secagg_downlink_bytes", 0) for r in rows) / sampled,
        "rounds_s": summary["rounds_seconds"],
        "secagg_s": sum(r.get("secagg_seconds", 0.0) for r in rows),
        "survivors": sum(r.get("secagg_survivors", r["clients_ok"]) for r in rows) / len(rows),
        "accuracy": summary["final"]["global_on_global_test_accuracy"],
        "failed": sum(1 for r in rows if "secagg_failed" in r),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--crash", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--extra", nargs="*", default=[], help="overrides of the secure runs")
    parser.add_argument("--append", action="store_true", help="append rows to --out")
    args = parser.parse_args()
    invocation = " ".join(sys.argv[1:]).replace(str(REPO) + "/", "")
    lines = [
        f"`python docs/experiments/secagg_runs.py {invocation}` on "
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.platform()}, {os.cpu_count()} CPUs, "
        f"fedkd {_commit()}: FedMD, digits, inline engine. Bytes per client and round; "
        "time ratios are secure / plain from the same invocation.",
        "",
        "| clients | dropouts | survivors | uplink plain | uplink secure | protocol up | "
        "protocol down | bytes ratio | rounds s plain | rounds s secure | time ratio | "
        "server protocol s | student acc plain / secure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            for crash in args.crash:
                plain = run(clients, crash, False, args.rounds, Path(tmp) / "plain", [])
                secure = run(clients, crash, True, args.rounds, Path(tmp) / "secure", args.extra)
                total_secure = secure["up"] + secure["proto_up"] + secure["proto_down"]
                ratio = total_secure / plain["up"]
                lines.append(
                    f"| {clients} | {crash:.0%} | {secure['survivors']:.1f} | "
                    f"{plain['up']:,.0f} | {secure['up']:,.0f} | {secure['proto_up']:,.0f} | "
                    f"{secure['proto_down']:,.0f} | {ratio:.2f} | {plain['rounds_s']:.1f} | "
                    f"{secure['rounds_s']:.1f} | {secure['rounds_s'] / plain['rounds_s']:.2f} | "
                    f"{secure['secagg_s']:.2f} | {plain['accuracy']:.4f} / "
                    f"{secure['accuracy']:.4f} |"
                )
                print(lines[-1], flush=True)
    if args.append:  # a second table under the first, with its own command line
        lines = ["", *lines]
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        with args.out.open("a" if args.append else "w") as handle:
            handle.write(text)
    print(text)


def _commit() -> str:
    """The short commit, with ``+changes`` when the working tree differs from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(  # this script's own output does not count
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":!{OUTPUT}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (head or "unknown") + ("+changes" if dirty else "")


if __name__ == "__main__":
    main()
