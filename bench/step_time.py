"""Milliseconds per step per MEI: ``mei.methods.gradient_ascent`` against a reference-style loop.

Both run the seed's example config with a Gaussian-blurred gradient and an L2-norm constraint on the
Sensorium-scale 5-model ensembles of ``bench.models`` (``bench/sensorium.py``, its tiny variant, and the
Sensorium 2022 baseline built with neuralpredictors), interleaved in one run, and the median is reported.
``mei`` evaluates the readout at the one neuron asked for (the model's ``forward_selected``, or the lab
library's readouts recognised); the reference-style loop computes all of them and picks one, as the reference
did.

    python -m bench.step_time [--device cpu] [--steps 21] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from bench.models import MODELS, BenchModel
from bench.reference_style import FullReadout, reference_style_ascent
from bench.timing import Runner, Timing, measure_once
from mei.methods import gradient_ascent

RESULTS = Path(__file__).parent / "results"


def method_config(device: str, steps: int) -> dict:
    return {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": steps - 1}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
        "precondition": {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 25}},
        "device": device,
    }


def measure(bench_model: BenchModel, device: str, steps: int, repeats: int) -> dict:
    ensemble = bench_model.build().to(device)
    model, reference_model = bench_model.objective(ensemble, 0), bench_model.objective(FullReadout(ensemble), 0)
    shape = bench_model.shape
    runners: dict[str, Runner] = {
        "mei": lambda seed, n: gradient_ascent(None, model, method_config(device, n), seed, shape=shape),
        "reference_style": lambda seed, n: reference_style_ascent(
            reference_model, method_config(device, n), seed, shape
        ),
    }
    results = {name: run(0, steps) for name, run in runners.items()}  # warm-up, and the equality check
    max_difference = (results["mei"][0] - results["reference_style"][0]).abs().max().item()
    timings: dict[str, list[Timing]] = {name: [] for name in runners}
    for repeat in range(repeats):
        for name, run in runners.items():
            timings[name].append(measure_once(run, repeat, steps, device, long_first=repeat % 2 == 1))
    per_step = {name: [1000 * timing.seconds_per_step for timing in values] for name, values in timings.items()}
    return {
        "model": bench_model.description,
        "ms_per_step": {name: statistics.median(values) for name, values in per_step.items()},
        "all_ms_per_step": per_step,
        "fixed_ms": {
            name: statistics.median(1000 * timing.fixed_seconds for timing in values)
            for name, values in timings.items()
        },
        # Each repeat's pair of runs against each other.
        "ratio_mei_to_reference_style": statistics.median(
            ours / theirs for ours, theirs in zip(per_step["mei"], per_step["reference_style"], strict=True)
        ),
        "max_abs_difference_of_meis": max_difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=21, help="steps of the long run of each measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per loop (the median is kept)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/...)")
    args = parser.parse_args()
    report = {
        "benchmark": "ms per step per MEI, seed config + GaussianBlur precondition + ChangeNorm postprocessing",
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "steps": args.steps,
        "repeats": args.repeats,
        "results": {
            name: measure(MODELS[name], args.device, args.steps, args.repeats)
            for name in ("tiny", "sensorium", "neuralpredictors")
        },
    }
    out = args.out or RESULTS / f"step_time_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, result in report["results"].items():
        ms = result["ms_per_step"]
        print(
            f"{name:16s} mei {ms['mei']:8.2f} ms/step   reference-style {ms['reference_style']:8.2f} ms/step   "
            f"ratio {result['ratio_mei_to_reference_style']:.3f} max|diff| {result['max_abs_difference_of_meis']:.2e}"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
