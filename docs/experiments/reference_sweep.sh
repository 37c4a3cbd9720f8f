#!/usr/bin/env bash
# The sweep behind docs/RESULTS.md (issue 19): every method under experiment=reference.
# Resumable: a run whose directory already holds a completed summary.json is skipped, so
# the sweep can be stopped (Ctrl-C) and restarted, and filled over several sessions; a
# failed or interrupted run is moved aside (<dir>.failed-<time>) and rerun.
#
#   bash docs/experiments/reference_sweep.sh [OUT_DIR] [PART...]
#     PART: digits_mlp digits_cnn mnist1d_cnn (default: all three, in that order)
#   python -m simulations.report OUT_DIR/digits_mlp      # one table per alpha
#
# digits: alpha 0.1 and 1.0, seeds 0-2, MLP (9,610 parameters) and the reference CNN
# (29,066); mnist1d (12,000 samples): alpha 0.1 and 1.0, seeds 0-1, the reference 1-D CNN.
# Run from the repository root with the venv active. The MLP part takes about 25 minutes
# on 2 cores; the CNN parts several hours.
set -u
OUT=${1:-results/reference}
shift || true
PARTS=${*:-digits_mlp digits_cnn mnist1d_cnn}
METHODS=${METHODS:-local_only fedmd dsfl fedet fd fedproto fedavg fedprox fedadam fedyogi fedadagrad scaffold feddf centralized}
export FLWR_TELEMETRY_ENABLED=0
COMMON="experiment=reference progress=false report.html=false report.export=false checkpoint.every=0"

source "$(dirname "$0")/resumable_run.sh"

for part in $PARTS; do
    case $part in
        digits_mlp) data="dataset=digits model=mlp student=mlp"; seeds="0 1 2" ;;
        digits_cnn) data="dataset=digits model=cnn student=cnn"; seeds="0 1 2" ;;
        mnist1d_cnn) data="dataset=mnist1d model=cnn1d student=cnn1d"; seeds="0 1" ;;
        *) echo "unknown part $part"; exit 2 ;;
    esac
    for alpha in 0.1 1.0; do
        for seed in $seeds; do
            for method in $METHODS; do
                run "$OUT/$part/a$alpha/$method-s$seed" $data partition.alpha=$alpha \
                    seed=$seed strategy=$method
            done
        done
    done
done
