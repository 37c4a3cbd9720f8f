#!/usr/bin/env bash
# The runs behind docs/DISTILLATION.md: MNIST-1D (4000 samples), 10 clients, Dirichlet(0.5),
# 20 rounds, seed 0, in-process engine (same numbers as Ray, see docs/ARCHITECTURE.md).
# Usage: bash docs/experiments/distillation_mnist1d.sh [OUT_DIR]   (about 20 min on an idle 2-core machine)
# Then:  python docs/experiments/distillation_table.py OUT_DIR
set -euo pipefail
out=${1:-multirun/distillation_mnist1d}
common=(dataset=mnist1d backend=inline progress=false seed=0)
# FedDF's server distillation with a held-out proxy split and early stopping (docs/RESULTS.md).
watch=(strategy.distill_lr=0.001 strategy.distill_epochs=40
       strategy.distill_validation_fraction=0.2 strategy.distill_patience=5)
run() { name=$1; shift; python -m simulations.run "${common[@]}" "$@" "hydra.run.dir=$out/$name"; }

# References: the MLP trained federated without distillation, the CNN clients' own FedAvg,
# and both architectures trained centrally on the pooled client data.
run table/fedavg_mlp strategy=fedavg model=mlp student=mlp
run table/fedavg_cnn1d strategy=fedavg model=cnn1d student=cnn1d
run table/centralized_mlp strategy=centralized model=mlp student=mlp
run table/centralized_cnn1d strategy=centralized model=cnn1d student=cnn1d
# An MLP student distilled from 1-D CNN clients.
run table/feddf_kd_paper strategy=feddf model=cnn1d student=mlp
run table/feddf_kd strategy=feddf model=cnn1d student=mlp "${watch[@]}"
run table/feddf_kd_augment strategy=feddf model=cnn1d student=mlp "${watch[@]}" augment=sequence
run table/feddf_hint strategy=feddf model=cnn1d student=mlp "${watch[@]}" distill=hint
run table/feddf_rkd strategy=feddf model=cnn1d student=mlp "${watch[@]}" distill=feature distill.mode=rkd_distance
run table/feddf_self strategy=feddf model=cnn1d student=mlp "${watch[@]}" distill=self
run table/fedmd_kd strategy=fedmd model=cnn1d student=mlp
# Temperature and alpha (labeled proxy, so alpha mixes in the hard labels).
for t in 1 2 4 8; do
  for a in 0.5 1.0; do
    run "sweep/T${t}_alpha${a}" strategy=feddf model=cnn1d student=mlp "${watch[@]}" \
      data.proxy_labeled=true distill.temperature=$t distill.alpha=$a
  done
done
# A larger public set (half of the non-test data; clients keep the rest).
run large_proxy/fedavg_mlp strategy=fedavg model=mlp student=mlp data.proxy_fraction=0.5
run large_proxy/feddf_kd_augment strategy=feddf model=cnn1d student=mlp "${watch[@]}" \
  augment=sequence data.proxy_fraction=0.5
run large_proxy/feddf_hint_augment strategy=feddf model=cnn1d student=mlp "${watch[@]}" \
  augment=sequence distill=hint data.proxy_fraction=0.5
