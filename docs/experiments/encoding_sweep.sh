#!/usr/bin/env bash
# The runs behind "Encodings of shared predictions" in docs/ARCHITECTURE.md: DS-FL on digits
# (config defaults: 10 clients, Dirichlet(0.5), 20 rounds) with each encoding of the uploaded
# proxy predictions, seeds 0 and 1, in-process engine; then the table (uplink MB total, ratio to
# float32, final student accuracy mean ± std over the seeds).
# Usage: bash docs/experiments/encoding_sweep.sh [OUT_DIR]   (about 4 min on an idle 2-core machine)
set -euo pipefail
out=${1:-/tmp/enc}
run() {
  name=$1; seed=$2; shift 2
  python -m simulations.run backend=inline progress=false strategy=dsfl \
    strategy.distill_lr=0.001 "$@" seed=$seed "hydra.run.dir=$out/${name}_$seed"
}
for seed in 0 1; do
  run float32 $seed encoding.name=float32
  run float16 $seed encoding.name=float16
  run int8 $seed encoding.name=int8
  run topk1 $seed encoding.name=topk encoding.k=1
  run topk3 $seed encoding.name=topk encoding.k=3
done

python - "$out" <<'EOF'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
names = ["float32", "float16", "int8", "topk1", "topk3"]
labels = {"topk1": "topk, k=1", "topk3": "topk, k=3"}
runs = {n: [json.loads((out / f"{n}_{s}" / "summary.json").read_text()) for s in (0, 1)] for n in names}
uplink = {n: runs[n][0]["communication"]["uplink_bytes"] for n in names}
for n in names:  # the bytes do not depend on the seed
    assert all(r["communication"]["uplink_bytes"] == uplink[n] for r in runs[n]), n
print("| encoding | uplink MB (total) | ratio to float32 | final student accuracy (%) |")
print("|---|---|---|---|")
for n in names:
    acc = [100 * r["final"]["student_accuracy"] for r in runs[n]]
    print(
        f"| {labels.get(n, n)} | {uplink[n] / 1e6:.2f} | {uplink[n] / uplink['float32']:.3f} "
        f"| {statistics.mean(acc):.1f} ± {statistics.stdev(acc):.1f} |"
    )
EOF
