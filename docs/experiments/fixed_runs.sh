#!/usr/bin/env bash
# The fixed set of runs a behaviour-preserving change must leave byte-identical (issue 16):
# the default run, the FedAvg anchor (seed 0: student 0.924791086350975), one run per
# method as in RESULTS.md's first table, a ROBUSTNESS.md row, the healthcare preset (with
# reproducible DP noise, so two runs can be compared), and short runs through every
# privacy mechanism, encoding, attack on each statistics payload, faults and hetero clients.
#
#   bash docs/experiments/fixed_runs.sh /tmp/before     # on the old commit
#   bash docs/experiments/fixed_runs.sh /tmp/after      # on the new one
#   python docs/experiments/compare_runs.py /tmp/before /tmp/after
#
# About 12 minutes on 2 cores. Run from the repository root with the venv active.
set -u
OUT=${1:?usage: fixed_runs.sh OUT_DIR}
mkdir -p "$OUT"
export FLWR_TELEMETRY_ENABLED=0
COMMON="progress=false report.html=false report.export=false"
run() {
    name=$1; shift
    echo "== $name"
    python -m simulations.run $COMMON hydra.run.dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 \
        || echo "FAILED $name (see $OUT/$name.log)"
}
run default
run fedavg strategy=fedavg backend=inline
for m in local_only fedmd dsfl fedet fd fedavg feddf centralized fedproto fedgkt; do
    run "m_$m" backend=inline backend.torch_threads=1 strategy=$m dataset=digits model=cnn \
        student=cnn num_clients=20 partition.alpha=0.1 seed=0 data.proxy_labeled=true
done
run robust strategy=dsfl attack.kind=targeted attack.fraction=0.3 aggregation=median backend=inline
run healthcare experiment=healthcare backend=inline privacy.reproducible_noise=true
SHORT="backend=inline num_rounds=5"
run logit_central $SHORT strategy=fedmd privacy=logit_dp privacy.mode=central privacy.reproducible_noise=true
run logit_local $SHORT strategy=dsfl privacy=logit_dp privacy.mode=local privacy.reproducible_noise=true
run pate $SHORT strategy=fedmd privacy=pate privacy.reproducible_noise=true
run int8 $SHORT strategy=fedmd encoding.name=int8 strategy.teacher_space=probs
run topk $SHORT strategy=feddf strategy.teacher_from=predictions encoding.name=topk strategy.teacher_space=probs
run fd_signflip $SHORT strategy=fd data.proxy_labeled=true attack.kind=sign_flip attack.fraction=0.3
run proto_random $SHORT strategy=fedproto attack.kind=random attack.fraction=0.3
run feddf_scale $SHORT strategy=feddf attack.kind=scale attack.fraction=0.2 aggregation=median strategy.teacher_space=probs
run fedmd_faults $SHORT strategy=fedmd faults.crash_fraction=0.2 strategy.proxy_round_size=50
run hetero $SHORT strategy=fedmd model=hetero strategy.fraction_evaluate=0.5
