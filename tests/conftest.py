import copy

import pytest
import torch
from torch import nn


class Quadratic(nn.Module):
    """f(x) = -sum((target - x)^2) per image: its MEI is ``target``."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = nn.Parameter(target.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((self.target - x) ** 2).flatten(1).sum(dim=1)


def seed_method_config(**overrides) -> dict:
    """The seed document's example method config, on the CPU."""
    config = {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 1000}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
        "device": "cpu",
    }
    config.update(copy.deepcopy(overrides))
    return config


@pytest.fixture
def target() -> torch.Tensor:
    return torch.randn(1, 1, 12, 16, generator=torch.Generator().manual_seed(1))
