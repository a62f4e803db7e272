#!/usr/bin/env bash
# GPU checks in one go, for a machine with one CUDA device and PyTorch installed (no database needed):
#   bash bench/gpu.sh [RESULT_DIR]
# runs the tests marked `cuda`, then the benchmarks in order of importance: the device's busy share of a batched
# step of the 5 x 8,000 ensembles at the batch the service picks, the step time, the batched throughput (MEIs
# per hour and GPU memory per image) and the host overhead. Each stage is cut off after STAGE_SECONDS (default
# 150), so the whole fits a 10-minute lease; results go to RESULT_DIR (default bench/results).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
limit=${STAGE_SECONDS:-150}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
stage() { timeout "$limit" "$@" || echo "stage failed or cut off after ${limit} s: $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_device.txt"
# The tests of the framework only: the pipeline's CUDA tests would need PostgreSQL on the GPU machine.
stage python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_batching.py tests/test_gradient_ascent.py \
  tests/test_readouts.py tests/test_transparency.py 2>&1 | tee "$out/gpu_tests.txt"
stage python3 -m bench.device_busy --device cuda --steps 51 --repeats 3 --out "$out/device_busy_cuda.json"
stage python3 -m bench.step_time --device cuda --steps 51 --repeats 3 --out "$out/step_time_cuda.json"
stage python3 -m bench.batch_throughput --device cuda --batches 1,32,256,1024 --steps 21 --repeats 3 \
  --out "$out/batch_throughput_cuda.json"
stage python3 -m bench.host_overhead --device cuda --batches 64,1024,4096 --out "$out/host_overhead_cuda.json"
