"""The Sensorium-2022 mouse V1 model in plain PyTorch, with random weights fixed by a seed.

Core: a 9x9 convolution (no padding) and three depth-separable 7x7 layers, each followed by batch norm and
ELU. Readout: per neuron a position where the core output is sampled bilinearly, a linear map of the
channels plus a bias, then ELU + 1. ``forward_selected`` evaluates the readout at the requested neurons only
(the selected-outputs contract of ``mei.modules.selected_outputs``). The full model has 64 channels and 8,000
neurons (about 600 k parameters, 61 M multiply-adds per image); the tiny variant serves fast tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelSize:
    channels: int
    layers: int
    neurons: int
    input_shape: tuple[int, int, int] = (1, 36, 64)


FULL = ModelSize(channels=64, layers=4, neurons=8000)
TINY = ModelSize(channels=8, layers=2, neurons=50)


class DepthSeparableConv(nn.Sequential):
    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
        )


def build_core(size: ModelSize) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(size.input_shape[0], size.channels, 9, bias=False)]
    layers += [nn.BatchNorm2d(size.channels), nn.ELU()]
    for _ in range(size.layers - 1):
        layers += [DepthSeparableConv(size.channels, 7), nn.BatchNorm2d(size.channels), nn.ELU()]
    return nn.Sequential(*layers)


class PointReadout(nn.Module):
    """Each neuron reads the core's channels at one learned position."""

    def __init__(self, channels: int, neurons: int) -> None:
        super().__init__()
        self.positions = nn.Parameter(torch.empty(neurons, 2).uniform_(-0.9, 0.9))
        self.weights = nn.Parameter(torch.randn(neurons, channels) / channels**0.5)
        self.bias = nn.Parameter(torch.zeros(neurons))

    def forward(self, features: Tensor) -> Tensor:
        grid = self.positions.expand(features.shape[0], 1, -1, 2)
        sampled = F.grid_sample(features, grid, align_corners=True).squeeze(2)  # (batch, channels, neurons)
        return F.elu(torch.einsum("bcn,nc->bn", sampled, self.weights) + self.bias) + 1

    def forward_selected(self, features: Tensor, units: Tensor) -> Tensor:
        """Only the neurons ``units[i]`` (shape ``(batch, k)``) for image ``i``."""
        grid = self.positions[units].unsqueeze(1)  # (batch, 1, k, 2)
        sampled = F.grid_sample(features, grid, align_corners=True).squeeze(2)  # (batch, channels, k)
        linear = torch.einsum("bck,bkc->bk", sampled, self.weights[units]) + self.bias[units]
        return F.elu(linear) + 1


class SensoriumModel(nn.Module):
    def __init__(self, size: ModelSize = FULL) -> None:
        super().__init__()
        self.size = size
        self.core = build_core(size)
        self.readout = PointReadout(size.channels, size.neurons)

    def forward(self, x: Tensor, data_key: str | None = None, **kwargs: object) -> Tensor:
        return self.readout(self.core(x))

    def forward_selected(self, x: Tensor, units: Tensor, data_key: str | None = None, **kwargs: object) -> Tensor:
        """``forward(x)[i, units[i]]``, computing the readout of the selected neurons only."""
        return self.readout.forward_selected(self.core(x), units)


def build_model(size: ModelSize = FULL, seed: int = 0) -> SensoriumModel:
    """A model with weights and batch-norm statistics drawn from ``seed``, in eval mode."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = SensoriumModel(size)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def build_ensemble(size: ModelSize = FULL, members: int = 5, seed: int = 0) -> nn.Module:
    from mei.modules import EnsembleModel

    return EnsembleModel(*(build_model(size, seed + index) for index in range(members))).eval()
