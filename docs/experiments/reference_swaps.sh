#!/usr/bin/env bash
# docs/RESULTS.md "What moved each method": under experiment=reference (MLP, digits,
# alpha 0.1), one ingredient swapped back to fedkd's rule before issue 19, seeds 0-2.
# Resumable (completed runs are skipped). About 5 minutes on 2 cores.
#   bash docs/experiments/reference_swaps.sh [OUT_DIR]
#   python -m simulations.report OUT_DIR      # one row per swap, as "method (option)"
set -u
OUT=${1:-results/reference_swaps}
export FLWR_TELEMETRY_ENABLED=0
COMMON="experiment=reference progress=false report.html=false report.export=false checkpoint.every=0"
source "$(dirname "$0")/resumable_run.sh"
for seed in 0 1 2; do
    run "$OUT/feddf_probs_s$seed" strategy=feddf strategy.teacher_space=probs seed=$seed
    run "$OUT/feddf_logits_s$seed" strategy=feddf strategy.teacher_space=logits seed=$seed
    run "$OUT/fedmd_probs_s$seed" strategy=fedmd strategy.teacher_space=probs seed=$seed
    run "$OUT/fedmd_adam_s$seed" strategy=fedmd strategy.digest_optimizer=adam \
        strategy.digest_lr=0.001 seed=$seed
    run "$OUT/dsfl_adam_s$seed" strategy=dsfl strategy.digest_optimizer=adam \
        strategy.digest_lr=0.001 seed=$seed
done
