#!/usr/bin/env bash
# A 12-job sweep against 12 separate invocations of the same runs (issue 20, item 3), side
# by side: Ray (backend=ray_cpu) and in process (backend=inline), the sweep run by Hydra's
# basic launcher and, for inline, by hydra/launcher=fedkd_parallel (one job per free core).
# About 5 minutes on 2 cores; run nothing else meanwhile. Prints one line per variant.
#   bash docs/experiments/sweep_bench.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: sweep_bench.sh OUT_DIR}
rm -rf "$OUT" && mkdir -p "$OUT"
export FLWR_TELEMETRY_ENABLED=0
SEEDS=0,1,2,3,4,5,6,7,8,9,10,11
COMMON="num_rounds=3 progress=false"
seconds() { local t0; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; echo "$(date +%s.%N) - $t0" | bc; }
separate() {  # backend
    local t0; t0=$(date +%s.%N)
    for seed in ${SEEDS//,/ }; do
        python -m simulations.run backend="$1" $COMMON seed="$seed" \
            hydra.run.dir="$OUT/separate-$1/$seed" > /dev/null 2>&1
    done
    echo "$(date +%s.%N) - $t0" | bc
}
for backend in ray_cpu inline; do
    alone=$(separate "$backend")
    swept=$(seconds python -m simulations.run -m backend="$backend" $COMMON seed=$SEEDS \
        hydra.sweep.dir="$OUT/sweep-$backend")
    echo "$backend: 12 separate commands ${alone} s, one sweep ${swept} s," \
        "ratio $(echo "scale=2; $swept / $alone" | bc)"
    if [ "$backend" = inline ]; then
        parallel=$(seconds python -m simulations.run -m backend=inline $COMMON seed=$SEEDS \
            hydra/launcher=fedkd_parallel hydra.sweep.dir="$OUT/parallel-inline")
        echo "inline, fedkd_parallel: one sweep ${parallel} s," \
            "ratio $(echo "scale=2; $parallel / $alone" | bc)"
    fi
done
