#!/usr/bin/env bash
# The runs behind docs/PRIVACY.md: both presets (experiment=healthcare, experiment=finance),
# each without a mechanism and with logit_dp (central and local), pate and dpsgd at several
# noise levels, every run with the membership-inference audit; then an over-fit reference
# (local-only clients, 20 epochs a round) that shows the audit finds leakage where there
# is some. Seeds 0-1 (0-2 for the reference), reproducible noise (so the table can be regenerated), in-process engine.
# Usage: bash docs/experiments/privacy_sweep.sh [OUT_DIR]   (about 20 min on an idle 2-core machine)
# Then:  python docs/experiments/privacy_table.py OUT_DIR
set -euo pipefail
out=${1:-multirun/privacy_sweep}
common=(backend=inline progress=false ++privacy.max_epsilon=null ++privacy.target_epsilon=null ++privacy.reproducible_noise=true
        privacy.audit=true privacy.audit_clients=2 privacy.audit_shadows=8)
run() {
  name=$1; shift
  python -m simulations.run "${common[@]}" seed=$seed "$@" "hydra.run.dir=$out/seed$seed/$name"
}
# prediction sharing (logit_dp, pate) needs a method that shares no weights: DS-FL on 40
# proxy examples per round; DP-SGD covers FedDF's shared weights too.
share=(strategy=dsfl strategy.proxy_round_size=40 strategy.distill_lr=0.001)

for seed in 0 1; do
for preset in healthcare finance; do
  run "$preset/none_dsfl" experiment=$preset "${share[@]}" privacy=none
  run "$preset/none_feddf" experiment=$preset strategy=feddf privacy=none
  for z in 1 2 4; do
    run "$preset/logit_dp_$z" experiment=$preset "${share[@]}" privacy=logit_dp \
      privacy.mode=central privacy.noise_multiplier=$z
  done
  for z in 1 4; do
    run "$preset/logit_dp_local_$z" experiment=$preset "${share[@]}" privacy=logit_dp \
      privacy.mode=local privacy.noise_multiplier=$z
  done
  for sigma in 4 16; do  # plain GNMax (confident GNMax cannot pay off with a few clients)
    run "$preset/pate_$sigma" experiment=$preset "${share[@]}" privacy=pate privacy.sigma=$sigma \
      ++privacy.threshold=null ++privacy.sigma_threshold=null
  done
  for z in 1 2 4; do
    run "$preset/dpsgd_$z" experiment=$preset strategy=feddf privacy=dpsgd \
      privacy.noise_multiplier=$z
  done
done
done
for seed in 0 1 2; do
  leaky=(strategy=local_only num_rounds=5 client.epochs=20 data.local_test_fraction=0.4
         privacy.audit_clients=3)
  run overfit/local_only_none "${leaky[@]}" privacy=none
  run overfit/local_only_dpsgd_3 "${leaky[@]}" privacy=dpsgd privacy.noise_multiplier=3
done
# The canary audit's reference: DS-FL clients that memorise their data (20 epochs a round)
# and share predictions on the whole proxy every round (tests/privacy/test_canary_runs.py).
for seed in 0 1 2; do
  leaky=(strategy=dsfl num_clients=5 num_rounds=3 client.epochs=20 strategy.distill_epochs=2
         privacy.audit_clients=0 "privacy.audit_attacks=[loss]")
  run canary/dsfl_none "${leaky[@]}" privacy=none
  run canary/dsfl_logit_dp_local_5 "${leaky[@]}" privacy=logit_dp privacy.mode=local \
    privacy.noise_multiplier=5
  run canary/dsfl_logit_dp_local_0.5 "${leaky[@]}" privacy=logit_dp privacy.mode=local \
    privacy.noise_multiplier=0.5
  run canary/dsfl_logit_dp_2 "${leaky[@]}" privacy=logit_dp privacy.mode=central \
    privacy.noise_multiplier=2
done
