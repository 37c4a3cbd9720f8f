#!/usr/bin/env bash
# The measurements of docs/BENCHMARKS.md, one after another (about 30 min on 2 cores; run
# nothing else meanwhile). Usage: bash docs/experiments/bench_all.sh [OUT_DIR]
set -euo pipefail
out="${1:-docs/bench}"
mkdir -p "$out"
bench() { python -m simulations.bench "$@"; }
bench --clients 10,100 --rounds 4 --out "$out/default-fedkd.json"
bench --clients 10,100 --rounds 4 --set backend.engine=flower --out "$out/default-flower.json"
bench --tiny --clients 10,100 --rounds 4 --out "$out/tiny-fedkd.json"
bench --tiny --clients 10,100 --rounds 4 --set backend.engine=flower --out "$out/tiny-flower.json"
bench --clients 1000 --rounds 3 --out "$out/n1000-fedkd.json"
