"""Transparency: an alpha channel that lets a background show through, with the reference framework's semantics.

With ``transparency: True`` the image gets one more channel, last, the alpha channel, starting at 0.5. The model
sees the first channel blended over a ``background`` (``background * (1 - alpha) + image * alpha``; the other
channels unchanged; no ``transform``). The loss is ``(-evaluation + regularization(mean alpha)) * (1 - mean
alpha * transparency_weight)``: the regularization receives the mean alpha, not the image, and a more opaque
image is worth less. The mean alpha is over one key's images, so keys are generated one at a time.
Precondition, optimizer step and postprocessing act on all channels, and the MEI keeps its alpha channel.

Fixed on purpose: the reference moved the background to CUDA unconditionally, so it ran only on a GPU; here the
background follows the image's device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

INITIAL_ALPHA = 0.5


@dataclass(frozen=True)
class Transparency:
    background: Callable[[Tensor, int], Tensor]
    weight: float = 1.0

    @staticmethod
    def with_alpha(guess: Tensor) -> Tensor:
        """The initial guess with its alpha channel appended."""
        return torch.cat([guess, torch.full_like(guess[:, :1], INITIAL_ALPHA)], dim=1)

    def model_input(self, x: Tensor, iteration: int) -> Tensor:
        """What the model sees: the first channel blended over the background, the other image channels as
        they are, the alpha channel dropped."""
        image, alpha = x[:, :-1], x[:, -1:]
        backdrop = self.background(image, iteration)[0].to(x.device, x.dtype) * self.weight
        blended = backdrop * (1 - alpha) + image[:, :1] * alpha
        return torch.cat([blended, image[:, 1:]], dim=1)

    def mean_alpha(self, x: Tensor) -> Tensor:
        return x[:, -1].mean()

    def loss(self, evaluations: Tensor, reg_term: Tensor, mean_alpha: Tensor) -> Tensor:
        return (reg_term.sum() - evaluations.sum()) * (1 - mean_alpha * self.weight)
