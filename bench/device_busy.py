"""Whether the GPU waits for the host: the share of a batched step during which the device is busy.

A step of ``gradient_ascent_batch`` on the 5 x 8,000 ensembles of ``bench.models`` (``bench/sensorium.py`` and
the neuralpredictors baseline), at the batch size the service picks
(``mei.batching.estimated_batch_size``, at most ``--max-batch``), with the step-time benchmark's config.
PyTorch's profiler records, with CUDA activity only (CUPTI, no per-op host tracing that would slow the
host), every kernel, copy and fill the device runs; the union of their intervals is the device's busy time.
As ``bench.timing`` does, a one-step run is paired with a ``--steps`` run, so the setup of a generation
(initial guesses, model preparation) cancels out:

    busy share = (device time of the long run - of the short run) / (wall time of the long run - of the short)

A share near 1 says the device never waits for Python; the issue's goal is at least 0.9.

    python -m bench.device_busy [--device cuda] [--models sensorium,neuralpredictors] [--steps 51] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench.models import MODELS, BenchModel
from bench.step_time import method_config
from mei.batching import estimated_batch_size, gradient_ascent_batch


def busy_microseconds(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals: kernels on several streams may overlap."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def profiled(run, steps: int) -> tuple[float, float]:
    """Wall seconds and device-busy seconds of ``run(steps)``, the device's queue drained before and after."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        start = time.perf_counter()
        run(steps)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    intervals = [
        (event.time_range.start, event.time_range.end)
        for event in trace.events()
        if event.device_type == torch.autograd.DeviceType.CUDA and not event.is_user_annotation
    ]
    return wall, busy_microseconds(intervals) / 1e6


def measure(bench_model: BenchModel, device: str, steps: int, repeats: int, max_batch: int) -> dict:
    model = bench_model.build().to(device)

    def objectives(count: int) -> list[nn.Module]:
        return [bench_model.objective(model, 37 * key) for key in range(count)]

    picked = estimated_batch_size(None, objectives(1), method_config(device, 2), bench_model.shape)
    keys = min(picked, max_batch)

    def run(steps: int) -> None:
        config = method_config(device, steps)
        gradient_ascent_batch(None, objectives(keys), config, list(range(keys)), shape=bench_model.shape)

    run(2)  # warm up: kernels chosen, caches filled
    shares, step_ms, device_ms = [], [], []
    for _ in range(repeats):
        short_wall, short_busy = profiled(run, 1)
        long_wall, long_busy = profiled(run, steps)
        wall, busy = long_wall - short_wall, long_busy - short_busy
        shares.append(busy / wall)
        step_ms.append(1e3 * wall / (steps - 1))
        device_ms.append(1e3 * busy / (steps - 1))
    return {
        "model": bench_model.description,
        "batch_picked": picked,
        "keys": keys,
        "ms_per_step": statistics.median(step_ms),
        "device_ms_per_step": statistics.median(device_ms),
        "busy_share": statistics.median(shares),
        "busy_shares": shares,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="sensorium,neuralpredictors", help=f"some of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=51)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("bench/results/device_busy_cuda.json"))
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        parser.error("the device's busy time is measured on a CUDA device; this machine has none")
    results = {}
    for name in args.models.split(","):
        results[name] = found = measure(MODELS[name], args.device, args.steps, args.repeats, args.max_batch)
        print(
            f"{name}: {found['keys']} keys (picked {found['batch_picked']}): {found['ms_per_step']:.2f} ms per step, "
            f"device busy {found['device_ms_per_step']:.2f} ms: {100 * found['busy_share']:.1f} %"
        )
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": args.steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report, "models": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
