"""Preconditions: operations on the gradient before the optimizer step.

The smoothing filters here serve as postprocessing too (a blurred image rather than a blurred gradient).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .operation import Operation, as_frames, decayed


@functools.lru_cache(maxsize=64)
def _gaussian_window(sigma: float, half_width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    offsets = torch.arange(-half_width, half_width + 1, dtype=torch.float64, device=device)
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (window / window.sum()).to(dtype)


class GaussianBlur(Operation):
    """Blurs each channel of each image (or video frame) with a Gaussian of std ``sigma`` (pixels), reflecting
    at the edges.

    With ``decay_factor`` the std at iteration ``i`` is ``sigma + decay_factor * (i - 1)``. The window is
    truncated at ``truncate`` stds (at least one pixel each side) and normalised to sum to one.
    """

    def __init__(
        self, sigma: float, decay_factor: float | None = None, truncate: float = 4, pad_mode: str = "reflect"
    ) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.sigma = sigma
        self.decay_factor = decay_factor
        self.truncate = truncate
        self.pad_mode = pad_mode

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        sigma = decayed(self.sigma, self.decay_factor, iteration)
        if sigma <= 0:
            raise ValueError(f"GaussianBlur: sigma decayed to {sigma} at iteration {iteration}; it must stay positive")
        half_width = max(round(sigma * self.truncate), 1)
        frames = as_frames(x, self)
        channels = frames.shape[1]
        window = _gaussian_window(float(sigma), half_width, x.device, x.dtype)
        padded = F.pad(frames, (half_width,) * 4, mode=self.pad_mode)
        blurred = F.conv2d(padded, window.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
        blurred = F.conv2d(blurred, window.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return blurred.reshape(x.shape)


class TemporalLowPass(Operation):
    """Smooths each pixel of a video over time with a Gaussian of std ``sigma`` frames, repeating the first and
    last frames at the ends: a precondition against flicker, which a video model's temporal filters barely see.
    The window is truncated at ``truncate`` stds (at least one frame each side) and sums to one."""

    def __init__(self, sigma: float, truncate: float = 4) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.sigma = sigma
        self.truncate = truncate

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        if x.dim() != 5:
            raise ValueError(
                f"TemporalLowPass smooths videos (batch, channels, time, height, width), got a tensor of shape "
                f"{tuple(x.shape)}"
            )
        half_width = max(round(self.sigma * self.truncate), 1)
        window = _gaussian_window(float(self.sigma), half_width, x.device, x.dtype)
        series = x.movedim(2, -1)  # (batch, channels, height, width, time)
        padded = F.pad(series.reshape(-1, 1, x.shape[2]), (half_width, half_width), mode="replicate")
        smoothed = F.conv1d(padded, window.view(1, 1, -1))
        return smoothed.reshape(series.shape).movedim(-1, 2)


@functools.lru_cache(maxsize=16)
def _fourier_filter(height: int, width: int, freq_exp: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    freq_y = torch.fft.fftfreq(height, device=device, dtype=torch.float64)[:, None]
    freq_x = torch.fft.rfftfreq(width, device=device, dtype=torch.float64)[None, :]
    radius = torch.sqrt(freq_y**2 + freq_x**2)
    return ((1 - math.sqrt(2) * radius).clamp(min=0) ** freq_exp).to(dtype)


class FourierSmoothing(Operation):
    """Scales each spatial frequency ``f`` (cycles per pixel) by ``(1 - sqrt(2) |f|) ** freq_exp``."""

    def __init__(self, freq_exp: float) -> None:
        self.freq_exp = freq_exp

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        height, width = x.shape[-2:]
        spectrum = torch.fft.rfft2(x)
        spectrum = spectrum * _fourier_filter(height, width, float(self.freq_exp), x.device, x.real.dtype)
        return torch.fft.irfft2(spectrum, s=(height, width))


class DivideByMeanOfAbsolute(Operation):
    """Divides each image by the mean of its absolute values."""

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        return x / x.abs().flatten(1).mean(dim=1).reshape(-1, *([1] * (x.dim() - 1)))


class MultiplyBy(Operation):
    """Multiplies by ``const``, decayed by ``decay_factor`` per iteration (a step-size schedule)."""

    def __init__(self, const: float, decay_factor: float | None = None) -> None:
        self.const = const
        self.decay_factor = decay_factor

    def __call__(self, x: Tensor, iteration: int) -> Tensor:
        return x * decayed(self.const, self.decay_factor, iteration)
