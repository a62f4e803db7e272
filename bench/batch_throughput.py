"""MEIs per hour on the Sensorium-scale 5-model ensembles: batched generation against one key at a time.

    python -m bench.batch_throughput [--device cpu] [--batches 1,8,32,128] [--steps 11] [--repeats 5]
        [--models sensorium,neuralpredictors]

The models are ``bench.models``': ``bench/sensorium.py`` (which defines ``forward_selected``) and the
Sensorium 2022 baseline built with neuralpredictors (whose readouts the framework recognises).

Every runner generates MEIs of different neurons and seeds with the seed's example config plus
``GaussianBlur(sigma=1)`` and ``ChangeNorm(25)`` (as ``bench.step_time``), interleaved in one run:

- ``reference_style``: one key at a time in ``bench/reference_style.py`` (two forwards per step, parameter
  gradients, host copies), the full 8,000-neuron readout;
- ``one_at_a_time_full_readout``: ``mei.methods.gradient_ascent``, every neuron computed (``FullReadout``);
- ``one_at_a_time``: ``mei.methods.gradient_ascent``, evaluating the readout at the key's neuron only;
- ``batch_<n>``: ``mei.batching.gradient_ascent_batch`` over ``n`` keys at once.

Each measurement pairs a one-step run with a ``--steps`` run (``bench.timing``), which separates the time
per step from the fixed cost of a generation (initial guess, components, model preparation). The figures are
the medians of the time per step per MEI and of the fixed time per MEI, and MEIs per hour at
``--mei-steps`` steps (1,001: the seed's ``NumIterations(1000)``). On the CPU glibc's allocator returns and
refetches the large activation blocks of big batches; the benchmark keeps them (``MALLOC_MMAP_MAX_=0``,
``MALLOC_TRIM_THRESHOLD_``) by starting itself again with those variables unless ``--glibc-defaults`` is
given. Results in ``bench/results/batch_throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from bench.models import MODELS, BenchModel
from bench.reference_style import FullReadout, reference_style_ascent
from bench.step_time import method_config
from bench.timing import Runner, Timing, measure_once, timed
from mei.batching import gradient_ascent_batch
from mei.methods import gradient_ascent
from mei.modules import selected_outputs
from mei.preparation import generation_mode
from workers.runtime import CPU_ALLOCATOR_SETTINGS

RESULTS = Path(__file__).parent / "results"


def runners(
    bench_model: BenchModel, model: nn.Module, device: str, batches: list[int]
) -> dict[str, tuple[int, Runner]]:
    """Each runner's name, the MEIs it makes per call, and the call ``run(seed offset, steps)``."""
    shape = bench_model.shape

    def reference(offset: int, steps: int) -> None:
        objective = bench_model.objective(FullReadout(model), offset)
        reference_style_ascent(objective, method_config(device, steps), offset, shape)

    def single(objective_model: nn.Module) -> Runner:
        def run(offset: int, steps: int) -> None:
            objective = bench_model.objective(objective_model, offset)
            gradient_ascent(None, objective, method_config(device, steps), offset, shape=shape)

        return run

    def batched(size: int) -> Runner:
        def run(offset: int, steps: int) -> None:
            objectives = [bench_model.objective(model, offset + 37 * i) for i in range(size)]
            seeds = [offset + i for i in range(size)]
            gradient_ascent_batch(None, objectives, method_config(device, steps), seeds, shape=shape)

        return run

    table = {
        "reference_style": (1, reference),
        "one_at_a_time_full_readout": (1, single(FullReadout(model))),
        "one_at_a_time": (1, single(model)),
    }
    table.update({f"batch_{size}": (size, batched(size)) for size in batches})
    return table


def measure(
    bench_model: BenchModel, model: nn.Module, device: str, steps: int, repeats: int, batches: list[int], mei_steps: int
) -> dict:
    model = model.to(device)
    table = runners(bench_model, model, device, batches)
    for _, run in table.values():  # warm-up
        run(0, 2)
    timings: dict[str, list[Timing]] = {name: [] for name in table}
    memory: dict[str, int] = {}
    for repeat in range(repeats):
        for name, (size, run) in table.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                baseline = torch.cuda.memory_allocated()
            timings[name].append(measure_once(run, 1000 * (repeat + 1), steps, device, long_first=repeat % 2 == 1))
            if device.startswith("cuda"):
                memory[name] = (torch.cuda.max_memory_allocated() - baseline) // size
    reference = timings["reference_style"]
    results = {}
    for name, (size, _) in table.items():
        measured = timings[name]
        seconds_per_mei = statistics.median(timing.seconds(mei_steps) / size for timing in measured)
        results[name] = {
            "ms_per_step_per_mei": 1000 * statistics.median(timing.seconds_per_step / size for timing in measured),
            "fixed_ms_per_mei": 1000 * statistics.median(timing.fixed_seconds / size for timing in measured),
            "seconds_per_mei": seconds_per_mei,
            "meis_per_hour": 3600 / seconds_per_mei,
            # Each repeat's runner against the reference-style loop of the same repeat.
            "speedup_over_reference_style": statistics.median(
                reference_timing.seconds(mei_steps) / (timing.seconds(mei_steps) / size)
                for timing, reference_timing in zip(measured, reference, strict=True)
            ),
            "pairs_seconds": [[timing.one_step_seconds, timing.many_steps_seconds] for timing in measured],
            **({"gpu_bytes_per_mei": memory[name]} if name in memory else {}),
        }
    return results


def model_pass_times(bench_model: BenchModel, model: nn.Module, device: str, batches: list[int], repeats: int) -> dict:
    """Milliseconds per image of one forward pass and input gradient at the selected neurons, with the model as
    it is (eval mode, frozen) and as generation prepares it (``mei.preparation``), side by side."""
    model = model.to(device).eval()
    flags = [parameter.requires_grad for parameter in model.parameters()]
    passes = 3

    def per_image(size: int) -> float:
        images = torch.randn(size, *bench_model.input_shape, device=device, requires_grad=True)
        chosen = torch.arange(size, device=device)[:, None] * 37 % bench_model.neurons

        def run() -> None:
            for _ in range(passes):
                selected_outputs(model, images, chosen, **bench_model.forward_kwargs).sum().backward()

        run()  # warm-up
        return timed(run, device) / passes / size

    def as_is(size: int) -> float:
        model.requires_grad_(False)
        try:
            return per_image(size)
        finally:
            for parameter, flag in zip(model.parameters(), flags, strict=True):
                parameter.requires_grad_(flag)

    def prepared(size: int) -> float:
        with generation_mode(model, torch.device(device)):
            return per_image(size)

    variants = [("as_is", as_is), ("prepared", prepared)]
    times: dict[str, dict[int, list[float]]] = {name: {} for name, _ in variants}
    for repeat in range(repeats):
        for size in batches:
            for name, measure_pass in variants if repeat % 2 == 0 else variants[::-1]:
                times[name].setdefault(size, []).append(measure_pass(size))
    return {
        name: {f"batch_{size}": 1000 * statistics.median(values) for size, values in by_size.items()}
        for name, by_size in times.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,8,32,128", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=11, help="steps of the long run of each measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per runner (the median is kept)")
    parser.add_argument("--mei-steps", type=int, default=1001, help="steps of one MEI, for MEIs per hour")
    parser.add_argument("--models", default="sensorium,neuralpredictors", help=f"some of {', '.join(MODELS)}")
    parser.add_argument("--glibc-defaults", action="store_true", help="keep glibc's allocator settings")
    parser.add_argument("--out", type=Path, default=None, help="result file")
    args = parser.parse_args(argv)
    missing_settings = any(name not in os.environ for name in CPU_ALLOCATOR_SETTINGS)
    if args.device == "cpu" and not args.glibc_defaults and missing_settings:
        # glibc reads these when the process starts: start again with them set.
        command = [sys.executable, "-m", "bench.batch_throughput", *sys.argv[1:]]
        os.execve(sys.executable, command, {**os.environ, **CPU_ALLOCATOR_SETTINGS})
    batches = [int(size) for size in args.batches.split(",")]
    measured = {}
    for name in args.models.split(","):
        bench_model = MODELS[name]
        model = bench_model.build()
        measured[name] = {
            "model": bench_model.description,
            "results": measure(bench_model, model, args.device, args.steps, args.repeats, batches, args.mei_steps),
            "model_pass_ms_per_image": model_pass_times(bench_model, model, args.device, batches, args.repeats),
        }
    report = {
        "benchmark": "MEIs per hour, seed config + GaussianBlur precondition + ChangeNorm postprocessing",
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "malloc": {name: os.environ.get(name, "glibc default") for name in CPU_ALLOCATOR_SETTINGS},
        "steps_measured": args.steps,
        "repeats": args.repeats,
        "mei_steps": args.mei_steps,
        "models": measured,
    }
    out = args.out or RESULTS / f"batch_throughput_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for model_name, found in measured.items():
        print(model_name)
        for name, result in found["results"].items():
            print(
                f"  {name:28s} {result['ms_per_step_per_mei']:8.2f} ms/step/MEI  {result['meis_per_hour']:9.1f} "
                f"MEIs/h  {result['speedup_over_reference_style']:6.2f}x reference-style"
            )
        passes = found["model_pass_ms_per_image"]
        for batch, prepared in passes["prepared"].items():
            print(f"  model pass, {batch:10s} as is {passes['as_is'][batch]:7.2f} ms/image  prepared {prepared:7.2f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
