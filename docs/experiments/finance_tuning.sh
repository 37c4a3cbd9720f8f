#!/usr/bin/env bash
# Tuning of experiment=finance (docs/experiments/finance_tuning.md): which private method,
# epsilon and schedule leave the student clearly above the majority baseline (balanced
# accuracy 0.5, AUC 0.5) at a record-level epsilon <= 8, delta = 1e-5.
# Honesty rule: every candidate is compared on a VALIDATION draw of borrowers
# (dataset.seed=1, run seeds 0 and 1); only the chosen setting, its non-private twin and the
# best prediction-sharing candidate are then run on the standard draw (dataset.seed=0) that
# the tables report. Every command spells out what it changes from the preset as shipped
# (FedDF + DP-SGD, client.lr=0.1, target_epsilon=4), so the grid means the same after the
# preset changes. Reproducible noise, in-process engine, one run at a time.
# Usage: bash docs/experiments/finance_tuning.sh [OUT_DIR] [validation|report|all]
#        (about 15 min for the validation grid, 1 min for the report, on a 2-core machine)
# Prints one line per setting: final-round student balanced accuracy, AUC, accuracy (mean
# over run seeds, then each seed's balanced accuracy/AUC), record-level and client-level
# epsilon, rounds completed, seconds spent in rounds.
set -euo pipefail
out=${1:-/tmp/finance_tuning}
phase=${2:-all}
common=(experiment=finance backend=inline progress=false report.html=false report.export=false
        ++privacy.reproducible_noise=true)
run() {  # run NAME DATASET_SEED OVERRIDES... (run seeds 0 and 1)
  name=$1; data_seed=$2; shift 2
  for seed in 0 1; do
    python -m simulations.run "${common[@]}" dataset.seed=$data_seed seed=$seed "$@" \
      "hydra.run.dir=$out/data$data_seed/$name/seed$seed" >/dev/null 2>&1 \
      || echo "failed: $name seed $seed" >&2
  done
}
eps() { echo "++privacy.target_epsilon=$1 privacy.max_epsilon=$1"; }  # record level, calibrated
# prediction sharing with central logit_dp (the former preset: DS-FL, 40 proxy rows a round)
share=(strategy=dsfl strategy.proxy_round_size=40 client.lr=0.05)
central=(privacy=logit_dp privacy.mode=central privacy.clip=1.0)
# DP-SGD clients, FedDF (the former preset's client.lr)
dp=(strategy=feddf privacy=dpsgd client.lr=0.05)

if [[ $phase == validation || $phase == all ]]; then
v=1
# --- prediction sharing, record-level epsilon 8: rounds, rows per round, method, student
run dsfl_central_N40_R10 $v "${share[@]}" "${central[@]}" $(eps 8)
run dsfl_central_N40_R5 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=5
run dsfl_central_N40_R2 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2
run dsfl_central_N40_R1 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=1
run dsfl_central_N10_R2 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 strategy.proxy_round_size=10
run dsfl_central_N100_R2 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 strategy.proxy_round_size=100
run dsfl_central_N400_R1 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=1 strategy.proxy_round_size=400
run dsfl_central_N60_R3 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=3 strategy.proxy_round_size=60
run fedmd_central_N40_R2 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 strategy=fedmd
run fedet_central_N40_R2 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 strategy=fedet
run pate_N40_R2 $v "${share[@]}" privacy=pate $(eps 8) num_rounds=2
run dsfl_central_N40_R2_student16 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 student.hidden=[16]
run dsfl_central_N100_R2_student16 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 \
  strategy.proxy_round_size=100 student.hidden=[16]
run dsfl_central_N40_R2_dlr0.01 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 strategy.distill_lr=0.01
run dsfl_central_N40_R2_depochs50 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 strategy.distill_epochs=50
run dsfl_central_N40_R2_era0.5 $v "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2 strategy.era_temperature=0.5
# --- DP-SGD clients: method, epsilon, schedule, step size, model size, clipping
run feddf_dpsgd_e8 $v "${dp[@]}" $(eps 8)
run fedavg_dpsgd_e8 $v "${dp[@]}" $(eps 8) strategy=fedavg
run feddf_dpsgd_e4 $v "${dp[@]}" $(eps 4)
run feddf_dpsgd_e8_bs128 $v "${dp[@]}" $(eps 8) client.batch_size=128
run feddf_dpsgd_e8_lr0.1 $v "${dp[@]}" $(eps 8) client.lr=0.1
run feddf_dpsgd_e8_ep1 $v "${dp[@]}" $(eps 8) client.epochs=1
run feddf_dpsgd_e8_R5 $v "${dp[@]}" $(eps 8) num_rounds=5
run feddf_dpsgd_e8_R20 $v "${dp[@]}" $(eps 8) num_rounds=20
run feddf_dpsgd_e8_h32 $v "${dp[@]}" $(eps 8) model.hidden=[32] student.hidden=[32]
run feddf_dpsgd_e8_gn0.5 $v "${dp[@]}" $(eps 8) privacy.max_grad_norm=0.5
run feddf_dpsgd_e8_lr0.1_h32 $v "${dp[@]}" $(eps 8) client.lr=0.1 model.hidden=[32] student.hidden=[32]
run feddf_dpsgd_e8_lr0.1_ep3 $v "${dp[@]}" $(eps 8) client.lr=0.1 client.epochs=3
run feddf_dpsgd_e4_lr0.1 $v "${dp[@]}" $(eps 4) client.lr=0.1     # chosen: the preset as shipped
run feddf_dpsgd_e4_lr0.1_R20 $v "${dp[@]}" $(eps 4) client.lr=0.1 num_rounds=20
run feddf_dpsgd_e2_lr0.1 $v "${dp[@]}" $(eps 2) client.lr=0.1
run feddf_dpsgd_e2_lr0.1_R20 $v "${dp[@]}" $(eps 2) client.lr=0.1 num_rounds=20
# --- non-private references
run dsfl_none $v "${share[@]}" privacy=none
run feddf_none $v "${dp[@]}" privacy=none
fi

if [[ $phase == report || $phase == all ]]; then
t=0   # the standard draw the tables report
run preset_feddf_dpsgd_e4 $t                                  # experiment=finance as shipped
run preset_nonprivate $t privacy=none                         # the same setting without DP
run dsfl_central_N40_R2 $t "${share[@]}" "${central[@]}" $(eps 8) num_rounds=2  # best prediction sharing
fi

python - "$out" <<'PY'
import json, pathlib, statistics, sys
for setting in sorted(p for p in pathlib.Path(sys.argv[1]).glob("data*/*") if p.is_dir()):
    runs = []
    for run_dir in sorted(setting.glob("seed*")):
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
            rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
        except (OSError, ValueError):
            print(f"{setting.parent.name}/{setting.name} {run_dir.name}: no result")
            continue
        privacy, last = summary.get("privacy", {}), rows[-1]
        runs.append({"bal": last["student_balanced_accuracy"], "auc": last["student_auc"],
                     "acc": last["student_accuracy"], "eps": privacy.get("epsilon"),
                     "eps_client": privacy.get("epsilon_client"),
                     "rounds": summary["rounds_completed"],
                     "seconds": sum(r.get("seconds") or 0 for r in rows)})
    if not runs:
        continue
    mean = lambda k: statistics.mean(r[k] for r in runs)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    each = " ".join(f"{r['bal']:.3f}/{r['auc']:.3f}" for r in runs)
    print(f"{setting.parent.name}/{setting.name:32s} bal={mean('bal'):.3f} auc={mean('auc'):.3f} "
          f"acc={mean('acc'):.3f} ({each}) eps={fmt(runs[0]['eps'])} "
          f"eps_client={fmt(runs[0]['eps_client'])} rounds={runs[0]['rounds']} "
          f"seconds={mean('seconds'):.1f}")
PY
