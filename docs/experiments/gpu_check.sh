#!/usr/bin/env bash
# The GPU path's throughput check (issue 20, item 6), prepared for a machine with one CUDA
# GPU; NOT RUN YET (docs/BENCHMARKS.md says the GPU path is untested until it has been).
# Three short bench invocations, each against the plain loop on the same device:
#   1. backend=batched on CUDA, the reference workload at 100 and 1000 clients;
#   2. backend=ray_gpu (fedkd's actor pool), 0.25 GPU per actor (4 clients per GPU) and
#      0.1 (10 clients per GPU), the reference workload at 100 clients;
#   3. nvidia-smi before and after (the card, its memory).
# About 5 minutes on an H100-class machine with 16 cores. Run from the repository root with
# the venv active and a CUDA build of torch:
#   bash docs/experiments/gpu_check.sh OUT_DIR
set -eu
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
export FLWR_TELEMETRY_ENABLED=0
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv > "$OUT/gpu-before.csv"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
python -m simulations.bench --workload reference --clients 100,1000 --rounds 3 \
    --backend batched --set backend.device=cuda --out "$OUT/gpu-batched.json"
for share in 0.25 0.1; do
    python -m simulations.bench --workload reference --clients 100 --rounds 3 \
        --backend ray_gpu --set backend.num_gpus=$share --out "$OUT/gpu-ray-$share.json"
done
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv > "$OUT/gpu-after.csv"
python docs/experiments/bench_table.py "$OUT"/gpu-*.json > "$OUT/table.md"
cat "$OUT/table.md"
