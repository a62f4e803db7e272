"""The host's cost of a batched step: ``gradient_ascent_batch`` against a bare PyTorch loop, same arithmetic.

The model costs almost nothing (each unit is one pixel of a 1x4x4 image, scaled), so what is left of a step is
the bookkeeping around the model: states, stoppers, trackers. The bare loop does the same arithmetic (forward,
backward, SGD step, the evaluations copied to the host every 10 steps, as ``EvaluationObjective(10)`` reads
them) and nothing else. Both are timed per step (``bench.timing``: a one-step run against a ``steps``-step
run of 201), side by side in one process, batches of 16 to 4,096 keys, the seed's config.

    python -m bench.host_overhead [--device cpu] [--batches 16,64,256,1024,4096] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from torch import nn

from bench.step_time import method_config
from bench.timing import measure_once
from mei.batching import gradient_ascent_batch
from mei.modules import ConstrainedOutputModel

SHAPE = (1, 1, 4, 4)
UNITS = 16


class NearlyFree(nn.Module):
    """Unit ``u`` of image ``i`` is pixel ``u`` of it, scaled: the cheapest model with a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, UNITS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.scale


def seed_config(steps: int, device: str) -> dict:
    """The seed document's config: the step-time benchmark's without its blur and norm."""
    config = method_config(device, steps)
    return {role: spec for role, spec in config.items() if role not in ("precondition", "postprocessing")}


def framework_runner(model: nn.Module, keys: int, device: str):
    objectives = [ConstrainedOutputModel(model, key % UNITS) for key in range(keys)]

    def run(seed: int, steps: int) -> object:
        seeds = [seed + key for key in range(keys)]
        return gradient_ascent_batch(None, objectives, seed_config(steps, device), seeds, shape=SHAPE)

    return run


def bare_runner(model: nn.Module, keys: int, device: str):
    units = (torch.arange(keys) % UNITS).to(device)[:, None]
    rows = torch.arange(keys, device=device)[:, None]

    def run(seed: int, steps: int) -> object:
        torch.manual_seed(seed)
        x = torch.randn(keys, *SHAPE[1:]).to(device).requires_grad_()
        optimizer = torch.optim.SGD([x], lr=0.1)
        log = []
        for step in range(steps):
            evaluations = model(x)[rows, units].reshape(keys)
            x.grad = None
            (-evaluations.sum()).backward()
            optimizer.step()
            if step % 10 == 0:
                log.append(evaluations.detach().tolist())
        return x.detach().cpu(), log

    return run


def per_step(run, steps: int, repeats: int, device: str) -> list[float]:
    run(0, 2)  # warm up
    return [measure_once(run, 0, steps, device, long_first=bool(r % 2)).seconds_per_step for r in range(repeats)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="16,64,256,1024,4096")
    # Long enough that the steps outweigh the noise of the fixed cost (drawing thousands of initial guesses).
    parser.add_argument("--steps", type=int, default=201)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/host_overhead_cpu.json"))
    args = parser.parse_args(argv)
    model = NearlyFree().to(args.device).requires_grad_(False)
    rows = []
    for keys in (int(size) for size in args.batches.split(",")):
        framework, bare = [], []
        for _ in range(args.repeats):  # alternated, so that both see the same machine
            framework += per_step(framework_runner(model, keys, args.device), args.steps, 1, args.device)
            bare += per_step(bare_runner(model, keys, args.device), args.steps, 1, args.device)
        ratios = [f / b for f, b in zip(framework, bare, strict=True)]
        row = {
            "keys": keys,
            "framework_ms_per_step": 1e3 * statistics.median(framework),
            "bare_ms_per_step": 1e3 * statistics.median(bare),
            "ratio": statistics.median(ratios),
            "framework_us_per_key_step": 1e6 * statistics.median(framework) / keys,
        }
        rows.append(row)
        print(
            f"{keys:5d} keys: {row['framework_ms_per_step']:8.3f} ms per step, bare {row['bare_ms_per_step']:7.3f} ms, "
            f"ratio {row['ratio']:5.2f}, {row['framework_us_per_key_step']:6.2f} us per key",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    args.out.write_text(json.dumps({"meta": meta, "steps": args.steps, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
