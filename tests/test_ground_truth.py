"""MEIs of model neurons with known receptive fields recover those receptive fields."""

import torch

from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel
from mei.synthetic import LinearNonlinearPopulation, gabor_filters


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_meis_of_gabor_neurons_correlate_with_their_filters():
    filters = gabor_filters(8, 24, 32, seed=0)
    population = LinearNonlinearPopulation(filters)
    config = {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 200}},
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 5.0}},
        "device": "cpu",
    }
    correlations = []
    for unit in range(len(filters)):
        mei, _, _ = gradient_ascent(
            None, ConstrainedOutputModel(population, unit), config, seed=unit, shape=(1, 1, 24, 32)
        )
        correlations.append(correlation(mei, filters[unit]))
    assert min(correlations) > 0.95, correlations


def test_gabor_filters_are_unit_norm_and_distinct():
    filters = gabor_filters(4, 20, 20, seed=1)
    assert torch.allclose(filters.flatten(1).norm(dim=1), torch.ones(4))
    assert abs(correlation(filters[0], filters[1])) < 0.9
    assert torch.equal(filters, gabor_filters(4, 20, 20, seed=1))
