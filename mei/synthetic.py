"""Model neurons with known receptive fields, for checking that a method finds what is there to find.

A linear-nonlinear neuron responds ``softplus(<filter, image>)``; under a norm constraint its most exciting
input is its filter, scaled. Gabor filters are the textbook model of V1 simple cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gabor_filters(count: int, height: int, width: int, seed: int = 0) -> Tensor:
    """``count`` unit-norm Gabor filters ``(count, 1, height, width)`` with random position, orientation,
    wavelength, phase and size, drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(count, 1, 1, generator=generator) * (high - low) + low

    size = min(height, width)
    center_y, center_x = uniform(0.3 * height, 0.7 * height), uniform(0.3 * width, 0.7 * width)
    orientation, phase = uniform(0, math.pi), uniform(0, 2 * math.pi)
    wavelength, envelope = uniform(0.25 * size, 0.5 * size), uniform(0.12 * size, 0.2 * size)
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1) - center_y
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1) - center_x
    along = xs * torch.cos(orientation) + ys * torch.sin(orientation)
    gaussian = torch.exp(-(xs**2 + ys**2) / (2 * envelope**2))
    filters = gaussian * torch.cos(2 * math.pi * along / wavelength + phase)
    filters = filters / filters.flatten(1).norm(dim=1).view(-1, 1, 1)
    return filters.unsqueeze(1)


class LinearNonlinearPopulation(nn.Module):
    """Neurons responding ``gain * softplus(<filter, image>)``, one output per filter."""

    def __init__(self, filters: Tensor, gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("filters", filters)
        self.gain = gain

    def forward(self, x: Tensor, **kwargs: object) -> Tensor:
        drive = x.flatten(1) @ self.filters.flatten(1).T
        return self.gain * F.softplus(drive)
