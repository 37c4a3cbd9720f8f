"""Cost of the SecAgg / SecAgg+ protocol itself: bytes per client and wall time per phase.

Usage: python docs/experiments/secagg_bench.py [--out FILE.md] [--repeats 3] [--seed 0]

Runs the four rounds of ``fedkd.privacy.secagg`` in one process (no Flower, no training):
n = 10 and 100 clients; 0 %, 10 %, 30 % of n drop after round 1 (shared their keys, send no
masked input: the server rebuilds their mask keys, the expensive case); the complete graph
and, at n = 100, the sparse SecAgg+ graph of the smallest even degree d with d / 2 >= dropouts.
L = 288 x 10 + 2 x 360 x 10 values (the digits run's proxy predictions, test predictions and
votes), bound 1.0, 24 fractional bits. Each run checks the unmasked sum against the survivors'
float sum within ``encoding.max_sum_error`` and raises otherwise. Bytes are counted from the
messages; times are ``time.perf_counter`` wall times, also divided by two baselines timed in
the same repeat (``np.sum`` of the n float32 vectors; fixed-point encode + sum + decode).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cryptography
import numpy as np

from fedkd.privacy.secagg import FixedPointEncoding, SecAggClient, SecAggParams, SecAggServer
from fedkd.privacy.secagg.graph import threshold_for
from fedkd.privacy.secagg.keys import KEY_BYTES
from fedkd.privacy.secagg.shamir import SHARE_BYTES

REPO = Path(__file__).resolve().parents[2]
VECTOR_LENGTH = 288 * 10 + 2 * 360 * 10
BOUND, FRAC_BITS = 1.0, 24
ID_BYTES = 8
KEYS_BYTES = 2 * KEY_BYTES  # X25519 cipher key and mask key
REPLY_SHARE_BYTES = SHARE_BYTES + ID_BYTES
CLIENT_PHASES = ("keygen", "share_keys", "masked_input", "unmask")
SERVER_PHASES = ("collect_keys", "route_shares", "collect_masked_inputs", "unmask")
BASELINES = ("np_sum", "fixed_point")
SETTING_HEAD = ["n", "graph", "d", "dropped"]
T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    clients: int
    degree: int
    dropouts: int


@dataclass
class Outcome:
    """One repeat of one setting: bytes per (surviving) client, seconds, the sum's error."""

    bytes_per_client: dict[str, int]
    seconds: dict[str, float]  # "client/<phase>" (median over clients), "server/<phase>"
    max_error: float


def settings() -> list[Setting]:
    chosen = []
    for n in (10, 100):
        for dropouts in (round(n * f) for f in (0.0, 0.1, 0.3)):
            chosen.append(Setting(n, n - 1, dropouts))
            if n == 100:
                chosen.append(Setting(n, min(n - 1, max(2, 2 * dropouts)), dropouts))
    return chosen


def timed(call: Callable[..., T], *args: object) -> tuple[T, float]:
    start = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - start


def baseline_seconds(call: Callable[[], object], *, calls: int = 21) -> float:
    """Fastest of ``calls`` timed calls: the least disturbed by other processes (as timeit)."""
    return min(timed(call)[1] for _ in range(calls))


def fixed_point_sum(encoding: FixedPointEncoding, values: np.ndarray) -> np.ndarray:
    """The unmasked pipeline: encode each vector, add mod ``2**b``, decode."""
    total = np.zeros(values.shape[1], dtype=np.uint64)
    for row in values:  # streamed, as a server would: no (n, L) uint64 temporary
        total += encoding.encode(row)
    return encoding.decode_sum(total)


def run_once(setting: Setting, rng: np.random.Generator) -> Outcome:
    """All four rounds; the dropped clients share their keys, then send nothing."""
    n, length = setting.clients, VECTOR_LENGTH
    encoding = FixedPointEncoding(bound=BOUND, num_clients=n, frac_bits=FRAC_BITS)
    params = SecAggParams(length, encoding, setting.degree, session=os.urandom(32))
    values = rng.uniform(-BOUND, BOUND, size=(n, length)).astype(np.float32)
    dropped = {int(u) for u in rng.choice(n, size=setting.dropouts, replace=False)}
    client_times: dict[str, list[float]] = {phase: [] for phase in CLIENT_PHASES}
    seconds: dict[str, float] = {}

    def client_call(phase: str, call: Callable[..., T], *args: object) -> T:
        result, elapsed = timed(call, *args)
        client_times[phase].append(elapsed)
        return result

    clients = {u: client_call("keygen", SecAggClient, u, params) for u in range(n)}
    adverts = [client.advertise_keys() for client in clients.values()]
    server = SecAggServer(params)
    broadcasts, seconds["server/collect_keys"] = timed(server.collect_keys, adverts)
    bundles = [client_call("share_keys", clients[u].share_keys, b) for u, b in broadcasts.items()]
    routed, seconds["server/route_shares"] = timed(server.route_shares, bundles)
    masked = [  # the dropped clients compute no y and send nothing more
        client_call("masked_input", clients[u].masked_input, values[u], shares)
        for u, shares in routed.items()
        if u not in dropped
    ]
    request, seconds["server/collect_masked_inputs"] = timed(server.collect_masked_inputs, masked)
    replies = [client_call("unmask", clients[u].unmask, request) for u in sorted(request.survivors)]
    total, seconds["server/unmask"] = timed(server.unmask, replies)
    assert server.graph is not None and server.graph.degree == setting.degree  # as labelled
    sizes = {  # the largest over clients, from the messages themselves
        "keys up": max(len(a.cipher_public) + len(a.mask_public) for a in adverts),
        "keys down": max(
            ID_BYTES * len(b.roster) + KEYS_BYTES * len(b.keys) for b in broadcasts.values()
        ),
        "shares up": max(sum(map(len, b.ciphertexts.values())) for b in bundles),
        "shares down": max(sum(map(len, r.ciphertexts.values())) for r in routed.values()),
        "y up": max(m.masked.nbytes for m in masked),
        "unmask down": ID_BYTES * (len(request.survivors) + len(request.dropped)),
        "unmask up": max(
            REPLY_SHARE_BYTES * (len(r.self_mask_shares) + len(r.mask_key_shares)) for r in replies
        ),
    }
    expected = values[sorted(request.survivors)].astype(np.float64).sum(axis=0)
    max_error = float(np.max(np.abs(total - expected)))
    if not max_error <= encoding.max_sum_error:  # not `assert`: must hold under python -O too
        raise AssertionError(
            f"{setting}: unmasked sum is off by {max_error:.3g}, more than the encoding's "
            f"max_sum_error {encoding.max_sum_error:.3g}"
        )
    seconds |= {f"client/{phase}": statistics.median(t) for phase, t in client_times.items()}
    seconds["client/total"] = sum(seconds[f"client/{phase}"] for phase in CLIENT_PHASES)
    seconds["server/total"] = sum(seconds[f"server/{phase}"] for phase in SERVER_PHASES)
    seconds["all"] = sum(map(sum, client_times.values())) + seconds["server/total"]
    seconds["np_sum"] = baseline_seconds(lambda: np.sum(values, axis=0))
    seconds["fixed_point"] = baseline_seconds(lambda: fixed_point_sum(encoding, values))
    return Outcome(bytes_per_client=sizes, seconds=seconds, max_error=max_error)


def median_over(outcomes: list[Outcome], key: str, per: str | None = None) -> float:
    """Median over repeats of ``seconds[key]``, or of ``seconds[key] / seconds[per]``."""
    return statistics.median(o.seconds[key] / (o.seconds[per] if per else 1.0) for o in outcomes)


def number(value: float) -> str:
    """Three significant digits, without exponents."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def setting_cells(setting: Setting) -> list[str]:
    graph = "complete" if setting.degree == setting.clients - 1 else "sparse"
    return [str(setting.clients), graph, str(setting.degree), str(setting.dropouts)]


def bytes_table(results: dict[Setting, list[Outcome]]) -> list[str]:
    head = [*SETTING_HEAD, "t", "b", "keys up", "keys down", "shares up", "shares down", "y up"]
    head += ["y up packed", "unmask down", "unmask up", "total", "total packed"]
    rows, plain = [], 4 * VECTOR_LENGTH
    for setting, outcomes in results.items():
        sizes = dict(outcomes[0].bytes_per_client)
        bits = FixedPointEncoding(BOUND, setting.clients, FRAC_BITS).modulus_bits
        sizes["total"] = sum(sizes.values())
        sizes["y up packed"] = math.ceil(bits / 8) * VECTOR_LENGTH
        sizes["total packed"] = sizes["total"] - sizes["y up"] + sizes["y up packed"]
        rows.append(
            [*setting_cells(setting), str(threshold_for(setting.degree + 1)), str(bits)]
            + [f"{sizes[key]:,}" for key in head[6:]]
            + [f"{sizes['total'] / plain:.2f} / {sizes['total packed'] / plain:.2f}"]
        )
    return markdown([*head, "total / plain 4L (uint64 / packed)"], rows)


def times_table(results: dict[Setting, list[Outcome]]) -> list[str]:
    shown = [*BASELINES]
    shown += [f"client/{phase}" for phase in (*CLIENT_PHASES, "total")]
    shown += [f"server/{phase}" for phase in (*SERVER_PHASES, "total")] + ["all"]
    rows = [
        setting_cells(setting)
        + [number(1000 * median_over(outcomes, key)) for key in shown]
        + [f"{max(o.max_error for o in outcomes):.1e}"]
        for setting, outcomes in results.items()
    ]
    return markdown([*SETTING_HEAD, *shown, "max abs error"], rows)


def ratios_table(results: dict[Setting, list[Outcome]]) -> list[str]:
    shown = ["client/share_keys", "client/masked_input", "client/total"]
    shown += ["server/route_shares", "server/unmask", "server/total", "all"]

    def ratio(outcomes: list[Outcome], key: str) -> str:
        return " / ".join(number(median_over(outcomes, key, base)) for base in BASELINES)

    rows = [
        setting_cells(setting) + [ratio(outcomes, key) for key in shown]
        for setting, outcomes in results.items()
    ]
    return markdown([*SETTING_HEAD, *shown], rows)


def machine_and_commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)

    commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    clean = git("diff", "--quiet", "HEAD", "--", "fedkd/privacy/secagg").returncode == 0
    return (
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs (shared, noisy); Python "
        f"{platform.python_version()}, numpy {np.__version__}, cryptography "
        f"{cryptography.__version__}. fedkd commit {commit} (fedkd/privacy/secagg "
        f"{'unmodified' if clean else 'MODIFIED'} relative to it)."
    )


def report(results: dict[Setting, list[Outcome]], wall_seconds: float) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    text = [
        "# SecAgg / SecAgg+ protocol cost (fedkd.privacy.secagg)",
        "",
        f"Written by `python {shlex.join(sys.argv)}` on {now:%Y-%m-%d %H:%M} UTC "
        f"in {wall_seconds:.0f} s.",
        machine_and_commit(),
        "",
        " ".join(__doc__.split("\n\n")[2].split()),  # the setup, as the docstring states it
        "",
        f"L = {VECTOR_LENGTH:,}; b = modulus bits, d = neighbour degree, t = Shamir threshold of "
        "the d + 1 holders. Dropped clients are drawn at random.",
        "",
        "## Bytes per client (payload, no framing)",
        "",
        "Largest over clients. keys: 64 B up; roster ids (8 B) and neighbours' key pairs down. "
        "shares: 176 B per encrypted share pair. y: uint64 (8 L); packed: ceil(b/8) L. unmask: "
        "survivor and dropped ids down; 66 B share + 8 B owner id per share up. Totals: up + "
        "down. Plain aggregation: 4 L bytes up (float32).",
        "",
        *bytes_table(results),
        "",
        "## Wall time, milliseconds (median over repeats)",
        "",
        "np_sum: np.sum of the n float32 vectors; fixed_point: encode the n vectors, add mod "
        "2**b, decode (each the fastest of 21 calls). client/*: per client, median over clients "
        "(survivors for masked_input and unmask); client/total: the sum of those medians. "
        "all: every client's time plus the server's. max abs error: largest over repeats.",
        "",
        *times_table(results),
        "",
        "## Wall time as a ratio to plain aggregation (x np_sum / x fixed_point)",
        "",
        "Ratios are taken within each repeat, then the median over repeats.",
        "",
        *ratios_table(results),
    ]
    return "\n".join(text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/experiments/secagg_bench.md")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per setting")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and dropouts")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    results: dict[Setting, list[Outcome]] = {setting: [] for setting in settings()}
    for repeat in range(args.repeats):
        for setting, outcomes in results.items():  # repeats interleaved: drift hits all alike
            outcomes.append(run_once(setting, rng))
            print(f"repeat {repeat + 1}: {setting}", file=sys.stderr)
    args.out.write_text(report(results, time.perf_counter() - start))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
