#!/usr/bin/env bash
# docs/RESULTS.md "The research goal" (issue 19, item 8): prediction-sharing levers under
# experiment=reference with the reference CNN. Settings are chosen on a validation
# federation (data_seed=1: its own test split, proxy and partition), never on the reference
# federation (data_seed=0); the chosen setting is then run on data_seed=0, seeds 0-2, next
# to FedAvg. Resumable (completed runs are skipped).
#   bash docs/experiments/research_goal.sh [OUT_DIR]
#   python docs/experiments/research_table.py OUT_DIR
set -u
OUT=${1:-results/research_goal}
export FLWR_TELEMETRY_ENABLED=0
COMMON="experiment=reference model=cnn student=cnn progress=false report.html=false report.export=false checkpoint.every=0"
source "$(dirname "$0")/resumable_run.sh"
V="$OUT/validation"
K="+model.init=kaiming +student.init=kaiming"
P="strategy=fedmd strategy.teacher_space=probs"
tune() { name=$1; shift; run "$V/$name" data_seed=1 seed=0 "$@"; }
tune fedavg strategy=fedavg
tune fedavg_kaiming strategy=fedavg $K
tune feddf strategy=feddf
tune dsfl strategy=dsfl
tune dsfl_warm5 strategy=dsfl strategy.digest_from_round=5
tune dsfl_distill40 strategy=dsfl strategy.distill_epochs=40 strategy.distill_lr=0.001
tune dsfl_kaiming strategy=dsfl $K
tune fedmd strategy=fedmd
tune fedmd_conf08 strategy=fedmd strategy.consensus_min_confidence=0.8
tune fedmd_warm5 strategy=fedmd strategy.digest_from_round=5
tune fedmd_distill40 strategy=fedmd strategy.distill_epochs=40 strategy.distill_lr=0.001
tune fedmd_kaiming strategy=fedmd $K
tune fedmd_kaiming_distill40 strategy=fedmd $K strategy.distill_epochs=40 strategy.distill_lr=0.001
tune fedmd_conf08_distill40 strategy=fedmd strategy.consensus_min_confidence=0.8 \
    strategy.distill_epochs=40 strategy.distill_lr=0.001
tune fedmd_probs $P
tune fedmd_probs_kaiming $P $K
tune fedmd_probs_conf05 $P strategy.consensus_min_confidence=0.5
tune fedmd_probs_keep05 $P strategy.consensus_keep_fraction=0.5
tune fedmd_probs_keep07 $P strategy.consensus_keep_fraction=0.7
tune fedmd_probs_digest2 $P strategy.digest_epochs=2
tune fedmd_probs_kl $P strategy.digest_soft_loss=kl
tune fedmd_probs_size $P aggregation=size_weighted
tune fedet_mean strategy=fedet strategy.weighting=mean strategy.digest_optimizer=sgd \
    strategy.digest_lr=0.05 strategy.digest_epochs=1
# the setting chosen on validation, on the reference federation
for seed in 0 1 2; do
    run "$OUT/test/fedmd_probs_size_s$seed" $P aggregation=size_weighted seed=$seed
    run "$OUT/test/fedavg_s$seed" strategy=fedavg seed=$seed
done
