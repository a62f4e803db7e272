"""Backgrounds for transparency: ``background(image, iteration) -> images``, of which the first is used."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# The reference scales its noise so that the largest magnitude is this many times ``strength``.
PEAK = 2.12


class WhiteNoiseBackground:
    """Normal noise of ``shape`` with ``mean`` and ``std``, scaled so that its largest magnitude is 2.12 times
    ``strength``; drawn anew on every call from the global generator (the method seeds it), so a run is
    reproducible and not batch-safe."""

    batch_safe = False

    def __init__(self, mean: float, std: float, shape: Sequence[int], strength: float = 1.0) -> None:
        self.mean = mean
        self.std = std
        self.shape = tuple(shape)
        self.strength = strength

    def __call__(self, image: Tensor, iteration: int) -> Tensor:
        noise = torch.randn(self.shape) * self.std + self.mean
        return noise * (PEAK * self.strength / noise.abs().max().clamp_min(1e-12))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std}, shape={self.shape}, strength={self.strength})"


class ConstantBackground:
    """A uniform background of ``value``, the shape of the image's first channel: an opaque wall."""

    batch_safe = True

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self, image: Tensor, iteration: int) -> Tensor:
        return torch.full_like(image[:, :1], self.value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(value={self.value})"
