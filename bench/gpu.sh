#!/usr/bin/env bash
# GPU checks in one go, for a machine with one CUDA device and PyTorch installed:
#   bash bench/gpu.sh [RESULT_DIR]
# runs the tests marked `cuda`, the step-time benchmark, the batched-throughput benchmark (MEIs per hour and
# GPU memory per image), the host-overhead benchmark on the GPU and the device's busy share of a batched step
# of the 5 x 8,000 ensemble at the batch the service picks; results go to RESULT_DIR (default
# bench/results). About 10 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_device.txt"
python3 -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.txt"
python3 -m bench.step_time --device cuda --steps 51 --repeats 5 --out "$out/step_time_cuda.json"
python3 -m bench.batch_throughput --device cuda --batches 1,8,32,128,512,1024 --steps 21 --repeats 3 \
  --out "$out/batch_throughput_cuda.json"
python3 -m bench.host_overhead --device cuda --batches 16,64,256,1024,4096 --out "$out/host_overhead_cuda.json"
python3 -m bench.device_busy --device cuda --out "$out/device_busy_cuda.json"
