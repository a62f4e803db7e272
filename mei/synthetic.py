"""Model neurons with known receptive fields, for checking that a method finds what is there to find.

A linear-nonlinear neuron responds ``softplus(<filter, image>)``; under a norm constraint its most exciting
input is its filter, scaled. Gabor filters are the textbook model of V1 simple cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gabor_filters(count: int, height: int, width: int, seed: int = 0, *, phase_shift: float = 0.0) -> Tensor:
    """``count`` unit-norm Gabor filters ``(count, 1, height, width)`` with random position, orientation,
    wavelength, phase and size, drawn from a generator seeded with ``seed``; ``phase_shift`` is added to every
    phase (``pi / 2`` gives each filter's quadrature partner)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(count, 1, 1, generator=generator) * (high - low) + low

    size = min(height, width)
    center_y, center_x = uniform(0.3 * height, 0.7 * height), uniform(0.3 * width, 0.7 * width)
    orientation, phase = uniform(0, math.pi), uniform(0, 2 * math.pi) + phase_shift
    wavelength, envelope = uniform(0.25 * size, 0.5 * size), uniform(0.12 * size, 0.2 * size)
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1) - center_y
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1) - center_x
    along = xs * torch.cos(orientation) + ys * torch.sin(orientation)
    gaussian = torch.exp(-(xs**2 + ys**2) / (2 * envelope**2))
    filters = gaussian * torch.cos(2 * math.pi * along / wavelength + phase)
    filters = filters / filters.flatten(1).norm(dim=1).view(-1, 1, 1)
    return filters.unsqueeze(1)


class EnergyModelPopulation(nn.Module):
    """Complex cells: each responds with the energy ``<g, x>^2 + <g', x>^2`` of a Gabor ``g`` and its quadrature
    partner ``g'``, so every phase of the grating drives it alike: an invariance, and many MEIs."""

    def __init__(self, count: int, height: int, width: int, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("even", gabor_filters(count, height, width, seed))
        self.register_buffer("odd", gabor_filters(count, height, width, seed, phase_shift=math.pi / 2))

    def forward(self, x: Tensor, **kwargs: object) -> Tensor:
        flat = x.flatten(1)
        return (flat @ self.even.flatten(1).T) ** 2 + (flat @ self.odd.flatten(1).T) ** 2


class LinearNonlinearPopulation(nn.Module):
    """Neurons responding ``gain * softplus(<filter, image>)``, one output per filter."""

    def __init__(self, filters: Tensor, gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("filters", filters)
        self.gain = gain

    def forward(self, x: Tensor, **kwargs: object) -> Tensor:
        drive = x.flatten(1) @ self.filters.flatten(1).T
        return self.gain * F.softplus(drive)


def video_filters(
    count: int, channels: int, frames: int, height: int, width: int, *, separable: bool, seed: int = 0
) -> Tensor:
    """``count`` unit-norm spatiotemporal filters ``(count, channels, frames, height, width)``.

    Separable: a Gabor (``gabor_filters``) times a biphasic temporal profile, the same for every channel up to
    a gain. Inseparable: a Gabor whose carrier drifts by a quarter cycle per frame, a motion-selective cell.
    """
    spatial = gabor_filters(count, height, width, seed=seed)  # (count, 1, height, width)
    if separable:
        time = torch.arange(frames, dtype=torch.float32)
        profile = torch.exp(-time / 2) - 0.5 * torch.exp(-time / 4)
        video = spatial.unsqueeze(2) * profile.view(1, 1, -1, 1, 1)
    else:
        generator = torch.Generator().manual_seed(seed)
        orientation = (torch.rand(count, generator=generator) * math.pi).view(-1, 1, 1, 1)
        ys = torch.arange(height, dtype=torch.float32).view(1, 1, -1, 1) - (height - 1) / 2
        xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, -1) - (width - 1) / 2
        along = xs * torch.cos(orientation) + ys * torch.sin(orientation)
        phases = torch.arange(frames, dtype=torch.float32).view(1, -1, 1, 1) * math.pi / 2
        size = min(height, width)
        carrier = torch.cos(2 * math.pi * along / (0.4 * size) + phases)
        envelope = torch.exp(-(xs**2 + ys**2) / (2 * (0.2 * size) ** 2))
        video = (envelope * carrier).unsqueeze(1)  # (count, 1, frames, height, width)
    gains = torch.linspace(1.0, 0.5, channels).view(1, -1, 1, 1, 1)
    video = video * gains
    return video / video.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)


class VideoLinearNonlinearPopulation(nn.Module):
    """Neurons responding ``softplus(<filter, the last frames of the video>)`` at each time step: a video
    model's output ``(batch, time, neurons)``, one time step per position of the filters along the video."""

    def __init__(self, filters: Tensor) -> None:
        super().__init__()
        self.register_buffer("filters", filters)

    def forward(self, x: Tensor, **kwargs: object) -> Tensor:
        drive = F.conv3d(x, self.filters)  # (batch, neurons, time steps, 1, 1)
        return F.softplus(drive.flatten(2).transpose(1, 2))
