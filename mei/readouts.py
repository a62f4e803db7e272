"""Selected-neuron evaluation of the lab library's readouts, with no code from the user.

Labs build their models with neuralpredictors: a core, then per data key a readout that maps the core's
feature map to thousands of neurons (``FullGaussian2d``, ``Gaussian2d``, ``PointPooled2d``,
``FullFactorized2d`` / ``SpatialXFeatureLinear``), inside a ``MultiReadoutBase`` and a ``FiringRateEncoder``.
An MEI needs one neuron per image, so during generation each such readout is stood in for by a
``SelectedReadout``: asked through ``selected_outputs`` for neurons ``units[i]`` of image ``i``, it computes
those neurons only, the same arithmetic restricted to them; called any other way, it is the readout.
Everything after a readout in these models acts on each neuron alone (the encoder's ELU and offset, an
ensemble's mean), so the model's output is then the selected outputs themselves.

Readouts are recognised by class, by name and module, without importing the library; a subclass that
defines its own ``forward`` is not one of them. ``mei.preparation`` swaps them in and keeps them only if the
objective and its gradient on the first images equal the full readout's; a ``FiringRateEncoder`` with a
modulator (which reads all neurons at once) keeps its readouts as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .library import library_class


@dataclass
class Request:
    """The neurons asked of one model call (``None``: all of them), and whether a readout answered with them."""

    units: Tensor | None
    served: bool = False


_request: ContextVar[Request | None] = ContextVar("selected_units", default=None)


@contextlib.contextmanager
def selecting(units: Tensor | None) -> Iterator[Request]:
    """Within the block, the model's recognised readouts compute the neurons ``units[i]`` of image ``i`` only;
    with ``units=None``, every neuron, as the reference framework did."""
    request = Request(units)
    token = _request.set(request)
    try:
        yield request
    finally:
        _request.reset(token)


def _gaussian(readout: nn.Module, x: Tensor, units: Tensor, shift: Tensor | None) -> Tensor:
    # At eval time the readout samples each neuron at its mean position (sample_grid without sampling).
    grid = readout.sample_grid(batch_size=1, sample=False)[0, units]  # (batch, k, 1, 2)
    features = readout.features.reshape(x.shape[1], -1)
    return _sampled(x, grid, features, readout.bias, units, shift, readout.align_corners)


def _point_pooled(readout: nn.Module, x: Tensor, units: Tensor, shift: Tensor | None) -> Tensor:
    readout.grid.data = torch.clamp(readout.grid.data, -1, 1)  # as the readout's own forward does
    grid = readout.grid[0, units]
    if shift is not None:
        grid = grid + shift[:, None, None, :]
    pools = [F.grid_sample(x, grid, align_corners=readout.align_corners)]
    for _ in range(readout.pool_steps):
        x = readout.avg(x)
        pools.append(F.grid_sample(x, grid, align_corners=readout.align_corners))
    features = readout.features.reshape(len(pools) * x.shape[1], -1)
    return _weighted(torch.cat(pools, dim=1).squeeze(-1), features, readout.bias, units)


def _factorized(readout: nn.Module, x: Tensor, units: Tensor, shift: Tensor | None) -> Tensor:
    if readout.constrain_pos:
        readout.features.data.clamp_min_(0)  # as the readout's own forward does
    spatial = readout.normalized_spatial[units]  # (batch, k, w, h)
    sampled = torch.einsum("bcwh,bkwh->bck", x, spatial)
    features = readout.features.movedim(0, 1)  # (channels, neurons)
    return _weighted(sampled, features, readout.bias, units)


def _sampled(
    x: Tensor, grid: Tensor, features: Tensor, bias: Tensor | None, units: Tensor, shift: Tensor | None, corners: bool
) -> Tensor:
    if shift is not None:
        grid = grid + shift[:, None, None, :]
    return _weighted(F.grid_sample(x, grid, align_corners=corners).squeeze(-1), features, bias, units)


def _weighted(sampled: Tensor, features: Tensor, bias: Tensor | None, units: Tensor) -> Tensor:
    """``sampled``: (batch, channels, k) at the neurons ``units`` (batch, k); ``features``: (channels, neurons)."""
    output = (sampled * features[:, units].movedim(0, 1)).sum(1)
    return output if bias is None else output + bias[units]


Selector = Callable[[nn.Module, Tensor, Tensor, Tensor | None], Tensor]
# The library's readouts, by class name, and how each computes selected neurons.
SELECTORS: dict[str, Selector] = {
    "FullGaussian2d": _gaussian,
    "Gaussian2d": _gaussian,
    "PointPooled2d": _point_pooled,
    "FullFactorized2d": _factorized,
}
# Readouts whose shift the selected path does not take: their own forward raises for it.
WITHOUT_SHIFT = {"FullFactorized2d"}


class SelectedReadout(nn.Module):
    """Stands in for a recognised readout during generation; see the module's docstring."""

    def __init__(self, readout: nn.Module, kind: str) -> None:
        super().__init__()
        self.readout = readout
        self.kind = kind

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        request = _request.get()
        shift = kwargs.get("shift")
        if (
            request is None
            or request.units is None
            or args
            or kwargs.get("sample") not in (None, False)
            or kwargs.get("out_idx") is not None
            or (shift is not None and self.kind in WITHOUT_SHIFT)
            or tuple(x.shape[1:]) != tuple(self.readout.in_shape)
        ):
            return self.readout(x, *args, **kwargs)
        if x.shape[0] != request.units.shape[0]:
            raise ValueError(
                f"the readout received {x.shape[0]} feature maps for {request.units.shape[0]} images: the model "
                "changes the batch before its readout, so its neurons cannot be selected per image"
            )
        request.served = True
        return SELECTORS[self.kind](self.readout, x, request.units, shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.readout!r})"


Replacement = tuple[nn.Module, str, SelectedReadout]


def stand_ins(model: nn.Module) -> tuple[list[Replacement], str | None]:
    """A ``SelectedReadout`` for each recognised readout of ``model``, as ``(parent, name, stand-in)``, and why
    some recognised readouts must stay as they are (``None`` when none must)."""
    reasons = []
    kept: set[int] = set()
    for module in model.modules():
        if library_class(module, {"FiringRateEncoder"}) is not None and module.modulator is not None:
            kept.update(id(part) for part in module.readout.modules())
            reasons.append(f"the {type(module).__name__}'s modulator reads all neurons at once")
    replacements = []
    for parent in model.modules():
        for name, child in parent._modules.items():
            cls = None if child is None or id(child) in kept else library_class(child, SELECTORS)
            if cls is not None:
                replacements.append((parent, name, SelectedReadout(child, cls.__name__)))
    return replacements, "; ".join(reasons) or None
