"""The demo: MEIs of model neurons whose receptive fields are known.

    python -m mei_service.demo [--neurons 8] [--iterations 300] [--out demo-output]

A population of linear-nonlinear neurons with Gabor receptive fields stands in for a trained model; the
seed document's gradient-ascent method, with a blurred gradient and an L2-norm constraint, generates one MEI
per neuron. The demo prints each neuron's score and the correlation of its MEI with its true receptive field,
and saves both side by side as a PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel
from mei.synthetic import LinearNonlinearPopulation, gabor_filters
from mei_service.figures import correlation, save_comparison_grid

SHAPE = (1, 1, 36, 64)


def method_config(iterations: int) -> dict:
    return {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": iterations}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
        "precondition": {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 10}},
        "device": "cpu",
    }


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neurons", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    args = parser.parse_args(argv)

    filters = gabor_filters(args.neurons, *SHAPE[2:], seed=0)
    population = LinearNonlinearPopulation(filters, gain=3.0)
    config = method_config(args.iterations)
    meis, correlations = [], []
    print(f"{'neuron':>6} {'score':>8} {'corr. with RF':>14} {'seconds':>8}")
    for neuron in range(args.neurons):
        start = time.perf_counter()
        mei, score, _ = gradient_ascent(
            None, ConstrainedOutputModel(population, neuron), config, seed=neuron, shape=SHAPE
        )
        meis.append(mei[0])
        correlations.append(correlation(mei, filters[neuron]))
        print(f"{neuron:>6} {score:>8.3f} {correlations[-1]:>14.3f} {time.perf_counter() - start:>8.2f}")
    mean_correlation = sum(correlations) / len(correlations)
    figure = save_comparison_grid(
        args.out / "meis.png",
        [("MEI", meis), ("true RF", list(filters))],
        [f"neuron {n}\nr={c:.2f}" for n, c in enumerate(correlations)],
    )
    print(f"mean correlation of MEIs with true receptive fields: {mean_correlation:.3f}")
    print(f"figure: {figure.resolve()}")
    return mean_correlation


if __name__ == "__main__":
    main()
