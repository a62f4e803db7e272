"""Postprocessing: constraints applied to the input after each optimizer step, outside the gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from .operation import Operation, per_image_norm


class PNormConstraint(Operation):
    """Scales each image down to p-norm ``norm_value`` when its p-norm exceeds it."""

    def __init__(self, norm_value: float, p: float = 1) -> None:
        self.norm_value = norm_value
        self.p = p

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        norms = per_image_norm(x, self.p)
        return x * torch.where(norms > self.norm_value, self.norm_value / norms, torch.ones_like(norms))


class PNormConstraintAndClip(PNormConstraint):
    """``PNormConstraint``, then clipping to ``[min_pixel_value, max_pixel_value]``."""

    def __init__(
        self, norm_value: float = 30.0, p: float = 1, max_pixel_value: float = 1.0, min_pixel_value: float = -1.0
    ) -> None:
        super().__init__(norm_value, p)
        self.max_pixel_value = max_pixel_value
        self.min_pixel_value = min_pixel_value

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        return super().__call__(x, iteration).clamp(self.min_pixel_value, self.max_pixel_value)


class ChangeNorm(Operation):
    """Scales each image to L2 norm ``norm``."""

    def __init__(self, norm: float) -> None:
        self.norm = norm

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        return x * (self.norm / per_image_norm(x, 2))


class ClipRange(Operation):
    """Clamps every pixel to ``[x_min, x_max]``."""

    def __init__(self, x_min: float, x_max: float) -> None:
        self.x_min = x_min
        self.x_max = x_max

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        return x.clamp(self.x_min, self.x_max)


class ChangeStd(Operation):
    """Scales each image to standard deviation ``std`` (unbiased), centred unless ``zero_mean`` is False."""

    def __init__(self, std: float, zero_mean: bool = True) -> None:
        self.std = std
        self.zero_mean = zero_mean

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        flat = x.flatten(1)
        shape = (-1, *([1] * (x.dim() - 1)))
        mean = flat.mean(dim=1).reshape(shape)
        std = flat.std(dim=1).reshape(shape)
        rescaled = (x - mean) * (self.std / (std + 1e-9))
        return rescaled if self.zero_mean else rescaled + mean
