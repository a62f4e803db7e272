"""Regularizers: terms computed from the (transformed) input and added to the loss.

Each returns one value per image, so that an image's gradient does not depend on the others in its batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .operation import Operation


class TotalVariation(Operation):
    """``weight`` times the total variation of each image (differences to the next row and column).

    Anisotropic: the sum of absolute differences. Isotropic: the sum of the gradient magnitudes. (The
    reference framework took differences to the last row instead of the next one; this is the textbook form.)
    """

    def __init__(self, weight: float = 1.0, isotropic: bool = False) -> None:
        self.weight = weight
        self.isotropic = isotropic

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        diff_y = x[..., 1:, :] - x[..., :-1, :]
        diff_x = x[..., :, 1:] - x[..., :, :-1]
        if self.isotropic:
            magnitude = torch.sqrt(diff_y[..., :, :-1] ** 2 + diff_x[..., :-1, :] ** 2 + 1e-12)
            variation = magnitude.flatten(1).sum(dim=1)
        else:
            variation = diff_y.abs().flatten(1).sum(dim=1) + diff_x.abs().flatten(1).sum(dim=1)
        return self.weight * variation


class LpNorm(Operation):
    """``weight`` times the p-norm of each image."""

    def __init__(self, weight: float = 1.0, p: float = 6) -> None:
        self.weight = weight
        self.p = p

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        return self.weight * x.flatten(1).norm(p=self.p, dim=1)
