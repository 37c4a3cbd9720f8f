#!/usr/bin/env bash
# The measurements of docs/BENCHMARKS.md, one after another, and their table (about 15-20
# min on 2 cores; run nothing else meanwhile). Usage: bash docs/experiments/bench_all.sh [OUT_DIR]
#
# Each invocation measures every backend it names against the same plain loops (run before
# and after all of them), so the ratios of one workload and N are side by side. The default
# workload at 1000 clients (about 12 min alone) is not rerun: the table takes its row from
# docs/bench/n1000-fedkd.json (fedkd's engine, measured before this harness measured
# several backends). A backend that fails is reported in its JSON and the table, and the
# script goes on; it exits 1 at the end.
set -uo pipefail
out="${1:-docs/bench}"
mkdir -p "$out"
failed=0
bench() { python -m simulations.bench "$@" || failed=1; }
# synthetic, 1000 records x 5 epochs per client (about 0.1-0.15 s per client round); ~8 min
bench --workload default --clients 10,100 --rounds 4 \
    --backend inline,batched,ray_cpu,ray_cpu:flower --out "$out/default.json"
# synthetic, 20 records x 1 epoch (fixed costs dominate); ~3 min
bench --workload tiny --clients 10,100 --rounds 4 \
    --backend inline,batched,ray_cpu,ray_cpu:flower --out "$out/tiny.json"
# experiment=reference with FedAvg (digits; IID above 20 clients, mnist1d above 500); ~4 min
bench --workload reference --clients 10,100 --rounds 5 \
    --backend inline,batched,ray_cpu --out "$out/reference.json"
bench --workload reference --clients 1000 --rounds 5 \
    --backend inline,batched --out "$out/reference-n1000.json"
python docs/experiments/bench_table.py "$out/default.json" "$out/tiny.json" \
    "$out/reference.json" "$out/reference-n1000.json" docs/bench/n1000-fedkd.json \
    | tee "$out/table.md"
exit "$failed"
