"""MEIs per hour on the Sensorium-scale 5-model ensemble: batched generation against one key at a time.

    python -m bench.batch_throughput [--device cpu] [--batches 1,8,32,128] [--steps 6] [--repeats 3]

Every runner generates MEIs of different neurons and seeds with the seed's example config plus
``GaussianBlur(sigma=1)`` and ``ChangeNorm(25)`` (as ``bench.step_time``), interleaved in one run:

- ``reference_style``: one key at a time in ``bench/reference_style.py`` (two forwards per step, parameter
  gradients, host copies), the full 8,000-neuron readout;
- ``one_at_a_time_full_readout``: ``mei.methods.gradient_ascent``, the model hiding its selected-outputs path;
- ``one_at_a_time``: ``mei.methods.gradient_ascent``, evaluating the readout at the key's neuron only;
- ``batch_<n>``: ``mei.batching.gradient_ascent_batch`` over ``n`` keys at once.

The figure is the median time per step per MEI, and MEIs per hour at ``--mei-steps`` steps (1,001: the
seed's ``NumIterations(1000)``). On the CPU glibc's allocator returns and refetches the large activation
blocks of big batches; the benchmark keeps them (``MALLOC_MMAP_MAX_=0``, ``MALLOC_TRIM_THRESHOLD_``) by
starting itself again with those variables unless ``--glibc-defaults`` is given. Results in
``bench/results/batch_throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bench.reference_style import FullReadout, reference_objective, reference_style_ascent
from bench.sensorium import FULL, TINY, build_ensemble
from bench.step_time import method_config
from mei.batching import gradient_ascent_batch
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel
from workers.runtime import CPU_ALLOCATOR_SETTINGS

RESULTS = Path(__file__).parent / "results"


def runners(model: nn.Module, config: dict, shape: tuple, batches: list[int]) -> dict[str, tuple[int, Callable]]:
    """Each runner's name, the MEIs it makes per call, and the call (taking a seed offset)."""
    units = model.members[0].readout.bias.numel()

    def reference(offset: int) -> None:
        reference_style_ascent(reference_objective(model, offset % units), config, offset, shape)

    def single(objective_model: nn.Module) -> Callable[[int], None]:
        def run(offset: int) -> None:
            gradient_ascent(None, ConstrainedOutputModel(objective_model, offset % units), config, offset, shape=shape)

        return run

    def batched(size: int) -> Callable[[int], None]:
        def run(offset: int) -> None:
            objectives = [ConstrainedOutputModel(model, (offset + 37 * i) % units) for i in range(size)]
            gradient_ascent_batch(None, objectives, config, [offset + i for i in range(size)], shape=shape)

        return run

    table = {
        "reference_style": (1, reference),
        "one_at_a_time_full_readout": (1, single(FullReadout(model))),
        "one_at_a_time": (1, single(model)),
    }
    table.update({f"batch_{size}": (size, batched(size)) for size in batches})
    return table


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model: nn.Module, device: str, steps: int, repeats: int, batches: list[int], mei_steps: int) -> dict:
    model = model.to(device)
    config = method_config(device, steps)
    shape = (1, *FULL.input_shape)
    table = runners(model, config, shape, batches)
    for _, run in table.values():  # warm-up
        run(0)
    times: dict[str, list[float]] = {name: [] for name in table}
    memory: dict[str, int] = {}
    for repeat in range(repeats):
        for name, (size, run) in table.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                baseline = torch.cuda.memory_allocated()
            synchronize(device)
            start = time.perf_counter()
            run(1000 * (repeat + 1))
            synchronize(device)
            times[name].append((time.perf_counter() - start) / steps / size * 1000)
            if device.startswith("cuda"):
                memory[name] = (torch.cuda.max_memory_allocated() - baseline) // size
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["reference_style"]
    return {
        name: {
            "ms_per_step_per_mei": medians[name],
            "all_ms_per_step_per_mei": times[name],
            "meis_per_hour": 3600 * 1000 / (medians[name] * mei_steps),
            "seconds_per_mei": medians[name] * mei_steps / 1000,
            "speedup_over_reference_style": reference / medians[name],
            **({"gpu_bytes_per_mei": memory[name]} if name in memory else {}),
        }
        for name in table
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,8,32,128", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=6, help="optimization steps per measured run")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per runner (the median is kept)")
    parser.add_argument("--mei-steps", type=int, default=1001, help="steps of one MEI, for MEIs per hour")
    parser.add_argument("--tiny", action="store_true", help="the tiny ensemble (a quick check of the benchmark)")
    parser.add_argument("--glibc-defaults", action="store_true", help="keep glibc's allocator settings")
    parser.add_argument("--out", type=Path, default=None, help="result file")
    args = parser.parse_args(argv)
    missing_settings = any(name not in os.environ for name in CPU_ALLOCATOR_SETTINGS)
    if args.device == "cpu" and not args.glibc_defaults and missing_settings:
        # glibc reads these when the process starts: start again with them set.
        command = [sys.executable, "-m", "bench.batch_throughput", *sys.argv[1:]]
        os.execve(sys.executable, command, {**os.environ, **CPU_ALLOCATOR_SETTINGS})
    batches = [int(size) for size in args.batches.split(",")]
    size = TINY if args.tiny else FULL
    results = measure(build_ensemble(size), args.device, args.steps, args.repeats, batches, args.mei_steps)
    report = {
        "benchmark": "MEIs per hour, seed config + GaussianBlur precondition + ChangeNorm postprocessing",
        "model": f"{size.layers} layers, {size.channels} channels, {size.neurons} neurons, 5 members",
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "malloc": {name: os.environ.get(name, "glibc default") for name in CPU_ALLOCATOR_SETTINGS},
        "steps_measured": args.steps,
        "repeats": args.repeats,
        "mei_steps": args.mei_steps,
        "results": results,
    }
    out = args.out or RESULTS / f"batch_throughput_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, result in results.items():
        print(
            f"{name:28s} {result['ms_per_step_per_mei']:8.2f} ms/step/MEI  {result['meis_per_hour']:9.1f} MEIs/h  "
            f"{result['speedup_over_reference_style']:6.2f}x reference-style"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
