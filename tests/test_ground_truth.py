"""MEIs of model neurons with known receptive fields recover those receptive fields."""

import pytest
import torch

from mei.methods import diverse_gradient_ascent, gradient_ascent
from mei.modules import ConstrainedOutputModel, ContrastiveOutputModel
from mei.synthetic import EnergyModelPopulation, LinearNonlinearPopulation, gabor_filters


def norm_constrained_ascent(lr: float, iterations: int, norm: float) -> dict:
    """Plain gradient ascent under a fixed image norm, where a linear-nonlinear neuron's MEI is its filter."""
    return {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": lr}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": iterations}},
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": norm}},
        "device": "cpu",
    }


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_meis_of_gabor_neurons_correlate_with_their_filters():
    filters = gabor_filters(8, 24, 32, seed=0)
    population = LinearNonlinearPopulation(filters)
    config = norm_constrained_ascent(lr=1.0, iterations=200, norm=5.0)
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


def test_the_most_discriminative_stimulus_raises_one_neuron_and_not_the_other():
    first, other = gabor_filters(2, 24, 32, seed=4)
    overlapping = 0.6 * first + 0.8 * other / other.norm()  # correlates 0.6 with the first neuron's filter
    filters = torch.stack([first, overlapping / overlapping.norm()])
    population = LinearNonlinearPopulation(filters)
    config = norm_constrained_ascent(lr=1.0, iterations=200, norm=1.0)
    shape = (1, 1, 24, 32)
    contrast = ContrastiveOutputModel(population, 0, others=[1])
    stimulus, score, _ = gradient_ascent(None, contrast, config, seed=0, shape=shape)
    mei, _, _ = gradient_ascent(None, ConstrainedOutputModel(population, 0), config, seed=0, shape=shape)
    blank = population(torch.zeros(1, 1, 24, 32))[0]
    responses, mei_responses = population(stimulus)[0], population(mei)[0]
    assert responses[0] > blank[0] and responses[1] < blank[1], "the first neuron up, the other down"
    assert mei_responses[1] > blank[1], "the plain MEI drives the overlapping neuron too"
    difference = filters[0] - filters[1]
    assert correlation(stimulus, difference) > 0.9 > correlation(mei, difference)
    assert score == pytest.approx(float(contrast(stimulus)), abs=0.05)


def test_diverse_meis_of_a_phase_invariant_neuron_stay_exciting_and_differ():
    population = EnergyModelPopulation(1, 20, 20, seed=3)
    objective = ConstrainedOutputModel(population, 0)
    config = norm_constrained_ascent(lr=0.5, iterations=400, norm=3.0)
    shape = (1, 1, 20, 20)
    diverse_config = {**config, "n_meis": 4, "diversity": {"fraction": 0.85, "weight": 1.0}}
    images, score, output = diverse_gradient_ascent(None, objective, diverse_config, seed=0, shape=shape)
    found = output["diversity"]
    assert images.shape == (4, 1, 20, 20)
    assert found["floor"] == pytest.approx(0.85 * found["mei_activation"])
    assert min(found["activations"]) >= found["floor"]
    assert score == pytest.approx(sum(found["activations"]) / 4)
    restarts = torch.cat([gradient_ascent(None, objective, config, seed=seed, shape=shape)[0] for seed in range(4)])

    def correlations(batch):
        flat = batch.flatten(1) - batch.flatten(1).mean(dim=1, keepdim=True)
        flat = flat / flat.norm(dim=1, keepdim=True)
        return (flat @ flat.T)[torch.triu_indices(4, 4, offset=1).unbind()]

    # Four images of a phase-invariant neuron spread evenly over phase: a quarter cycle apart, correlations
    # 0 and -1; restarts land on phases at random.
    assert correlations(images).max() < 0.1 < correlations(restarts).max() - 0.3
    assert correlations(images).mean() < -0.3
