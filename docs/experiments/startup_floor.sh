#!/bin/bash
# Start-up against the import floor (issue 20), side by side: REPS times (default 5), a bare
# `python -c "import torch"` (wall, from /usr/bin/time), then the reference inline run
# (its summary.json's startup_seconds, rounds_seconds, outputs_seconds and the command's
# wall time); prints every repetition and the medians. Run from the checkout with the venv
# active. Usage: docs/experiments/startup_floor.sh [REPS] [WORK_DIR]
set -euo pipefail
reps=${1:-5}
work=${2:-$(mktemp -d)}
mkdir -p "$work"
export FLWR_TELEMETRY_ENABLED=0
for i in $(seq 1 "$reps"); do
    dir="$work/run$i"
    /usr/bin/time -f "%e" -o "$dir.torch" python -c "import torch"
    /usr/bin/time -f "%e" -o "$dir.wall" python -m simulations.run backend=inline \
        strategy=fedavg seed=0 progress=false hydra.run.dir="$dir" > "$dir.log" 2>&1
    python - "$dir/summary.json" "$(cat "$dir.torch")" "$(cat "$dir.wall")" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"torch {float(sys.argv[2]):.2f} startup {summary['startup_seconds']:.2f} "
      f"rounds {summary['rounds_seconds']:.2f} outputs {summary['outputs_seconds']:.2f} "
      f"command {float(sys.argv[3]):.2f} accuracy {summary['final']['student_accuracy']}")
EOF
done | tee "$work/startup_floor.txt"
python - "$work/startup_floor.txt" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
median = {key: statistics.median(float(r[r.index(key) + 1]) for r in rows)
          for key in ("torch", "startup", "rounds", "outputs", "command")}
print("medians: " + " ".join(f"{k} {v:.2f} s" for k, v in median.items())
      + f"; startup / torch {median['startup'] / median['torch']:.2f}")
EOF
