#!/usr/bin/env bash
# Tuning of experiment=finance (docs/experiments/finance_tuning.md): which private method,
# epsilon and schedule leave the student clearly above the majority baseline (balanced
# accuracy 0.5, AUC 0.5) at a record-level epsilon <= 8, delta = 1e-5.
# Honesty rule: every candidate is compared on a VALIDATION draw of borrowers
# (dataset.seed=1, run seeds 0 and 1); only the chosen setting (and its non-private twin)
# is then run on the standard draw (dataset.seed=0) that the tables report.
# Usage: bash docs/experiments/finance_tuning.sh [OUT_DIR] [validation|report|all]
#        (about 15 min for the validation grid, 2 min for the report, on an idle 2-core machine)
# Then:  python docs/experiments/finance_tuning.py OUT_DIR   (one line per run)
set -euo pipefail
out=${1:-/tmp/finance_tuning}
phase=${2:-all}
common=(experiment=finance backend=inline progress=false report.html=false report.export=false
        ++privacy.reproducible_noise=true)
eps8=(++privacy.target_epsilon=8 privacy.max_epsilon=8)   # record level, calibrated before the run
run() {  # run NAME DATASET_SEED OVERRIDES... (run seeds 0 and 1)
  name=$1; data_seed=$2; shift 2
  for seed in 0 1; do
    python -m simulations.run "${common[@]}" dataset.seed=$data_seed seed=$seed "$@" \
      "hydra.run.dir=$out/data$data_seed/$name/seed$seed" >/dev/null 2>&1 \
      || echo "failed: $name seed $seed" >&2
  done
}
