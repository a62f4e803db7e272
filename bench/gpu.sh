#!/usr/bin/env bash
# GPU checks in one go, for a machine with one CUDA device and PyTorch installed:
#   bash bench/gpu.sh [RESULT_DIR]
# runs the tests marked `cuda` and the step-time benchmark on the GPU; results go to RESULT_DIR
# (default bench/results).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_device.txt"
python3 -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.txt"
python3 -m bench.step_time --device cuda --steps 50 --repeats 5 --out "$out/step_time_cuda.json"
