"""Transforms: applied to the input before the model sees it; the gradient flows through them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .operation import Operation, as_frames


class Jitter(Operation):
    """Shifts the image by a random offset in ``[-max_jitter, max_jitter]`` per axis, reflecting at the edges
    (a video: every frame by the same offset).

    One offset is drawn per call from the global torch generator on the CPU, so it is the same on every
    device for a given seed. The draw makes the result depend on the call order: not batch-safe.
    """

    batch_safe = False

    def __init__(self, max_jitter: int | tuple[int, int]) -> None:
        pair = (max_jitter, max_jitter) if isinstance(max_jitter, int) else tuple(max_jitter)
        if len(pair) != 2 or any(not isinstance(m, int) or m < 0 for m in pair):
            raise ValueError(f"max_jitter must be a non-negative int or a pair of them, got {max_jitter!r}")
        self.max_jitter = pair

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        max_y, max_x = self.max_jitter
        shift_y, shift_x = (int(torch.randint(-m, m + 1, ())) for m in (max_y, max_x))
        padded = F.pad(as_frames(x, self), (max_x, max_x, max_y, max_y), mode="reflect")
        height, width = x.shape[-2:]
        top, left = max_y - shift_y, max_x - shift_x
        return padded[..., top : top + height, left : left + width].reshape(x.shape)


class ChangeRange(Operation):
    """Maps the input into ``[x_min, x_max]`` with a sigmoid."""

    def __init__(self, x_min: float, x_max: float) -> None:
        self.x_min = x_min
        self.x_max = x_max

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        return torch.sigmoid(x) * (self.x_max - self.x_min) + self.x_min
