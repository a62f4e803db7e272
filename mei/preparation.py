"""The model during generation: on the device, in eval mode, frozen, and with cheaper equivalent layers.

Four rewrites give the same function for less work, and all are undone when generation ends:

- a batch norm in eval mode is an affine map per channel, so one that directly follows a convolution in an
  ``nn.Sequential`` (or ends a nested one, as a depth-separable convolution does) is folded into that
  convolution's weights and bias (two fewer passes over the activations, forward and backward);
- on the CPU, a 2-D convolution of at most four input channels (the first layer of most vision models) runs
  on PyTorch's im2col-and-matrix-product kernel: for so few channels oneDNN's kernel, PyTorch's default, takes
  up to 8 times as long for the forward pass and input gradient, and about as long at four channels on large
  images (``bench/conv_kernels.py``, ``docs/performance.md``);
- the lab library's unshifted ``AdaptiveELU`` runs as one ELU instead of three passes;
- the lab library's readouts compute only the neurons an objective selects (``mei.readouts``).

Only the exact PyTorch classes are rewritten, never subclasses (which may compute their weights otherwise),
modules with hooks or containers used in more than one place. A probe then checks each rewrite in turn: the
objective of the first images and its input gradient must not change beyond rounding, else the model runs
without that rewrite, and a warning says why. The probe computes in IEEE float32 even where convolutions
and matrix products would use TensorFloat-32 (cuDNN's default for convolutions): at TF32's 10-bit mantissa a
folded layer rounds differently from the original by about 1e-3, beyond the tolerance, and every rewrite
would be refused on a GPU. Generation itself keeps the precision the user chose.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import readouts
from .library import library_class

CONVOLUTION_BEFORE_NORM = {nn.BatchNorm1d: nn.Conv1d, nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm3d: nn.Conv3d}
IM2COL_MAX_INPUT_CHANNELS = 4
# How far a rewrite may move the probe's values and gradients, relative to each image's own: folding changes
# only the rounding (about 1e-7 in float32).
PROBE_TOLERANCE = 1e-4
# What a model that reaches into replaced layers raises. Other exceptions (a caller's time limit) go through.
MODEL_ERRORS = (ArithmeticError, AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError)

logger = logging.getLogger(__name__)

# A rewrite: in ``parent``, the child called ``name`` was ``original`` and is ``replacement``.
Swap = tuple[nn.Module, str, nn.Module, nn.Module]


@dataclass(frozen=True)
class Probe:
    """What checks a rewrite: ``objective(images)`` gives one value per image of ``images``."""

    objective: Callable[[Tensor], Tensor]
    images: Tensor


class Im2colConv2d(nn.Conv2d):
    """A ``Conv2d`` computed by PyTorch's im2col kernel, sharing the parameters of the one it stands in for."""

    @classmethod
    def sharing(cls, conv: nn.Conv2d) -> Im2colConv2d:
        replacement = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=conv.bias is not None,
            device="meta",
        )
        replacement.weight, replacement.bias = conv.weight, conv.bias
        return replacement.train(conv.training)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:  # the im2col kernel takes batches only
            return super().forward(x)
        return torch.ops.aten.thnn_conv2d(x, self.weight, self.kernel_size, self.bias, self.stride, self.padding)


@contextmanager
def generation_mode(
    model: nn.Module, device: torch.device | str, probe: Probe | None = None, *, rewrite: bool = True
) -> Iterator[nn.Module]:
    """Moves the model to ``device`` in eval mode with frozen parameters and (with ``rewrite``) cheaper
    equivalent layers, kept only if ``probe`` finds them equal; restores its layers, modes and flags after.
    Without a probe the rewrites are trusted: pass ``rewrite=False`` where a value must be the model's own
    and no probe has checked it (a one-off evaluation)."""
    device = torch.device(device)
    parameters = list(model.parameters())
    requires_grad = [parameter.requires_grad for parameter in parameters]
    modes = [(module, module.training) for module in model.modules()]
    model.to(device)
    model.eval()
    for parameter in parameters:
        parameter.requires_grad_(False)
    swaps: list[Swap] = []
    try:
        if rewrite:
            _rewrite(model, device, probe, swaps)
        yield model
    finally:
        _undo(swaps)
        for parameter, flag in zip(parameters, requires_grad, strict=True):
            parameter.requires_grad_(flag)
        for module, training in modes:
            module.training = training


@dataclass(frozen=True)
class Rewrite:
    """A rewrite of the model: ``apply(model, device, swaps)`` records its swaps and returns why it left some
    layers as they are (or ``None``). Warnings say what generation does without it (``fallback``) and what it
    would have done (``change``)."""

    apply: Callable[[nn.Module, torch.device, list[Swap]], str | None]
    fallback: str
    change: str

    @property
    def refused(self) -> str:
        return f"{self.fallback}: {self.change}"


def _cheaper_layers(model: nn.Module, device: torch.device, swaps: list[Swap]) -> None:
    _fold_batch_norms(model, swaps)
    if device.type == "cpu":
        _im2col_convolutions(model, swaps)
    _unshifted_activations(model, swaps)


def _selected_readouts(model: nn.Module, device: torch.device, swaps: list[Swap]) -> str | None:
    replacements, reason = readouts.stand_ins(model)
    uses = _uses(model)
    for parent, name, stand_in in replacements:
        # A readout registered in several places (a cloned readout's source) is computed in full.
        if uses[id(stand_in.readout)] == 1 and not _hooked(stand_in.readout):
            _swap(swaps, parent, name, stand_in)
    return reason


REWRITES = (
    Rewrite(_cheaper_layers, "generating with the model's layers as they are",
            "rewritten (batch norms folded, convolutions on the im2col kernel, activations merged)"),
    Rewrite(_selected_readouts, "evaluating every neuron of the model's readouts",
            "evaluated at the selected neurons only"),
)  # fmt: skip


def _rewrite(model: nn.Module, device: torch.device, probe: Probe | None, swaps: list[Swap]) -> None:
    """Applies the rewrites one after the other, each kept only if the probe finds the model unchanged by it."""
    expected = None  # the probe's response to the model as rewritten so far, once a rewrite needs it
    for rewrite in REWRITES:
        start = len(swaps)
        with torch.no_grad():
            left_alone = rewrite.apply(model, device, swaps)
        if left_alone is not None:
            logger.warning("%s: %s", rewrite.fallback, left_alone)
        if probe is None or len(swaps) == start:
            continue
        if expected is None:
            stage = swaps[start:]
            _undo(swaps, start)
            try:
                expected = _response(probe, device)
            except MODEL_ERRORS:
                return  # the model fails as it is: the generation reports that
            for parent, name, _, replacement in stage:
                _swap(swaps, parent, name, replacement)
        try:
            found = _response(probe, device)
        except MODEL_ERRORS as error:
            _undo(swaps, start)
            # The error's text, not the error: its traceback would hold the probe's tensors.
            logger.warning("%s, the model fails: %r", rewrite.refused, error)
            continue
        n_images = probe.images.shape[0]
        if all(_close(value, wanted, n_images) for value, wanted in zip(found, expected, strict=True)):
            expected = found
            continue
        _undo(swaps, start)
        logger.warning(
            "%s, they change its objective or gradient beyond rounding; the model may call its layers out of "
            "order, compute in low precision or mix neurons after its readout",
            rewrite.refused,
        )


def _response(probe: Probe, device: torch.device) -> tuple[Tensor, Tensor]:
    """The probe's values and their input gradient, leaving the random number generators as they were."""
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    else:
        devices = []
    with torch.random.fork_rng(devices=devices), full_precision():
        images = probe.images.detach().clone().requires_grad_()
        values = probe.objective(images)
        (gradient,) = torch.autograd.grad(values.sum(), images)
    return values.detach(), gradient


@contextmanager
def full_precision() -> Iterator[None]:
    """IEEE float32 for cuDNN's convolutions and CUDA's matrix products inside; the precisions as they were
    after. PyTorch 2.9 and later name them per backend (``fp32_precision``), earlier versions by flags."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        settings = [(torch.backends.cudnn.conv, "fp32_precision", "ieee")]
        settings.append((torch.backends.cuda.matmul, "fp32_precision", "ieee"))
    else:
        settings = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in settings]
    for owner, name, value in settings:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(settings, saved, strict=True):
            setattr(owner, name, value)


def _close(found: Tensor, expected: Tensor, n_images: int) -> bool:
    """Equal within ``PROBE_TOLERANCE`` of each image's own magnitude (plus a floor for values near zero)."""
    rows = n_images if expected.numel() % n_images == 0 else 1
    found, expected = found.reshape(rows, -1), expected.reshape(rows, -1)
    magnitude = expected.norm(dim=1)
    scale = magnitude + PROBE_TOLERANCE * magnitude.max()
    return bool(((found - expected).norm(dim=1) <= PROBE_TOLERANCE * scale).all())


def _swap(swaps: list[Swap], parent: nn.Module, name: str, replacement: nn.Module) -> None:
    swaps.append((parent, name, parent._modules[name], replacement))
    parent._modules[name] = replacement


def _undo(swaps: list[Swap], start: int = 0) -> None:
    """Undoes the swaps from position ``start`` on, last first."""
    while len(swaps) > start:
        parent, name, original, _ = swaps.pop()
        parent._modules[name] = original


def _uses(model: nn.Module) -> Counter[int]:
    """How often each module is registered in ``model``; ``_modules`` rather than ``named_children()``, which
    hides a module registered twice in one container."""
    return Counter(id(child) for parent in model.modules() for child in parent._modules.values())


def _fold_batch_norms(model: nn.Module, swaps: list[Swap]) -> None:
    uses = _uses(model)
    for parent in list(model.modules()):
        if not _runs_in_order(parent):
            continue
        for (before_name, before), (norm_name, norm) in pairwise(list(parent._modules.items())):
            if not _foldable_norm(norm):
                continue
            owner, conv_name, conv = _last_layer(parent, before_name, before, uses)
            if type(conv) is CONVOLUTION_BEFORE_NORM[type(norm)] and not conv.training and not _hooked(conv):
                _swap(swaps, owner, conv_name, fuse_conv_bn_eval(conv, norm))
                _swap(swaps, parent, norm_name, nn.Identity())


def _runs_in_order(module: nn.Module) -> bool:
    """True for a container whose forward applies its children one after the other."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _foldable_norm(module: nn.Module | None) -> bool:
    return (
        type(module) in CONVOLUTION_BEFORE_NORM
        and not module.training
        and module.running_mean is not None
        and module.running_var is not None
        and not _hooked(module)
    )


def _last_layer(
    parent: nn.Module, name: str, module: nn.Module, uses: Counter[int]
) -> tuple[nn.Module, str, nn.Module]:
    """The layer whose output is ``module``'s, with its container: inside nested sequential containers that are
    used only here (folding edits the container)."""
    while _runs_in_order(module) and len(module) > 0 and uses[id(module)] == 1 and not _hooked(module):
        parent, (name, module) = module, list(module._modules.items())[-1]
    return parent, name, module


def _unshifted_activations(model: nn.Module, swaps: list[Swap]) -> None:
    """The lab library's ``AdaptiveELU`` without shifts (its cores' default) is an ELU in three passes over the
    activations (subtract 0, ELU, add 0): one suffices."""
    for parent in list(model.modules()):
        for name, activation in list(parent._modules.items()):
            if (
                activation is not None
                and library_class(activation, {"AdaptiveELU"}) is not None
                and activation.xshift == 0
                and activation.yshift == 0
                and not _hooked(activation)
            ):
                _swap(swaps, parent, name, nn.ELU())


def _im2col_convolutions(model: nn.Module, swaps: list[Swap]) -> None:
    for parent in list(model.modules()):
        for name, conv in list(parent._modules.items()):
            if _few_input_channels(conv):
                _swap(swaps, parent, name, Im2colConv2d.sharing(conv))


def _few_input_channels(conv: nn.Module | None) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.in_channels <= IM2COL_MAX_INPUT_CHANNELS
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not _hooked(conv)
    )


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )
