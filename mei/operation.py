"""The common shape of transforms, preconditions and postprocessing: ``operation(images, iteration)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor


class Operation(ABC):
    """An operation on a batch of images ``(N, C, H, W)`` or videos ``(N, C, T, H, W)`` at a given iteration.

    ``batch_safe`` declares that each image's result depends on that image alone (and on no random draw), so
    that optimizing many images in one batch gives each of them its one-at-a-time result.
    """

    batch_safe: ClassVar[bool] = True

    @abstractmethod
    def __call__(self, x: Tensor, iteration: int) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def per_image_norm(x: Tensor, p: float = 2) -> Tensor:
    """The p-norm of each image, shaped ``(N, 1, ..., 1)`` to broadcast against ``x``."""
    norms = x.flatten(1).norm(p=p, dim=1)
    return norms.reshape(-1, *([1] * (x.dim() - 1)))


def as_frames(x: Tensor, operation: object) -> Tensor:
    """A batch of images as it is, or a batch of videos with each frame as an image ``(N, C x T, H, W)``, for
    spatial operations that act on each frame alone; reshape the result to ``x.shape``."""
    if x.dim() == 4:
        return x
    if x.dim() == 5:
        return x.flatten(1, 2)
    raise ValueError(
        f"{operation!r} takes images (batch, channels, height, width) or videos (batch, channels, time, height, "
        f"width), got a tensor of shape {tuple(x.shape)}"
    )


def decayed(value: float, decay_factor: float | None, iteration: int) -> float:
    """``value + decay_factor * (iteration - 1)``: the legacy schedule, which counts iterations from 1."""
    if decay_factor is None:
        return value
    return value + decay_factor * (iteration - 1)
