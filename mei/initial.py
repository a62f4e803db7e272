"""Initial guesses: where the optimization starts.

An initial guess is created with ``component(*shape)`` on the CPU, from the global torch random generator
that the method seeds, so that a seed gives the same starting image on every device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class InitialGuessCreator(ABC):
    """Base class of initial guesses: called with a shape, returns a tensor of that shape."""

    @abstractmethod
    def __call__(self, *shape: int) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class RandomNormal(InitialGuessCreator):
    """Standard normal noise."""

    def __call__(self, *shape: int) -> Tensor:
        return torch.randn(*shape)


class RandomNormalNullChannel(InitialGuessCreator):
    """Standard normal noise with one channel set to a constant."""

    def __init__(self, null_channel: int, null_value: float = 0.0) -> None:
        self.null_channel = null_channel
        self.null_value = null_value

    def __call__(self, *shape: int) -> Tensor:
        guess = torch.randn(*shape)
        guess[:, self.null_channel, ...] = self.null_value
        return guess
