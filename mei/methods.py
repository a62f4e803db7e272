"""Method functions: ``method(dataloaders, model, config, seed) -> (mei, score, output)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .config import OPERATION_COMPONENTS, MethodConfig
from .domain import State
from .errors import ConfigurationError
from .import_utils import build_component
from .optimization import Evaluate, Run, optimize
from .preparation import Probe, generation_mode
from .tracking import Tracker

BATCH_FIELDS = ("inputs", "images")


def _first_field(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if hasattr(batch, "_asdict"):
        batch = batch._asdict()
    if isinstance(batch, Mapping):
        for name in BATCH_FIELDS:
            if name in batch:
                return batch[name]
        return next(iter(batch.values()))
    if isinstance(batch, Sequence) and batch:
        return batch[0]
    raise ConfigurationError(f"cannot find the inputs in a batch of type {type(batch).__name__}")


def input_shape(dataloaders: Mapping[str, Any] | None, shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The shape of one input batch: ``shape`` if given, else that of the first training batch.

    The training loaders are ``dataloaders["train"]``, a mapping of data keys to loaders; the inputs of a
    batch are its field ``inputs``, else ``images``, else its first field.
    """
    if shape is not None:
        shape = tuple(int(size) for size in shape)
        if len(shape) < 2:
            raise ConfigurationError(f"shape must be (batch, channels, ...) like a data batch, got {shape}")
        return shape
    loaders = (dataloaders or {}).get("train")
    if not loaders:
        raise ConfigurationError(
            "cannot infer the input shape: there are no dataloaders['train']; pass shape=(1, C, H, W)"
        )
    loader = next(iter(loaders.values())) if isinstance(loaders, Mapping) else loaders
    return tuple(_first_field(next(iter(loader))).shape)


def gradient_ascent(
    dataloaders: Mapping[str, Any] | None,
    model: nn.Module,
    config: Mapping[str, Any],
    seed: int,
    *,
    shape: Sequence[int] | None = None,
) -> tuple[Tensor, float, dict[str, dict[str, list]]]:
    """Generates MEIs by gradient ascent on the input of ``model``.

    Returns the MEIs (a CPU tensor of shape ``(n_meis, C, H, W)``), the score (the model's evaluation of the
    last step's input; the mean over images when there are several) and the log of the tracked objectives.
    """
    method = MethodConfig.parse(config)
    batch_shape = input_shape(dataloaders, shape)
    guess, run = start_run(method, seed, batch_shape)
    forward_kwargs = method.model_forward_kwargs
    (final,) = ascend(lambda images, rows: model(images, **forward_kwargs), model, method, [guess], [run])
    return final.post_processed_input.cpu(), final.evaluation, run.tracker.log


def seed_generators(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for the generators a generation on ``device`` uses (the CPU's, and CUDA's on
    a GPU). The same states, without ``torch.manual_seed``'s queueing of seeds for every other backend, which
    records a stack trace each time (a millisecond a key, a second for a batch of 1,024 keys)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def start_run(method: MethodConfig, seed: int, batch_shape: Sequence[int]) -> tuple[Tensor, Run]:
    """The initial guess of one generation, drawn on the CPU from ``seed``, and its own stopper and tracker."""
    seed_generators(seed, method.device)
    initial = build_component("initial", method.components["initial"])
    guess = initial(method.n_meis, *batch_shape[1:])
    expected = (method.n_meis, *batch_shape[1:])
    if not isinstance(guess, Tensor) or tuple(guess.shape) != expected:
        raise ConfigurationError(
            f"the initial component {initial!r} must return a tensor of shape {expected}, "
            f"got {getattr(guess, 'shape', type(guess).__name__)}"
        )
    stopper = build_component("stopper", method.components["stopper"])
    tracker = Tracker({spec["path"]: build_component("objectives", spec) for spec in method.objectives})
    return guess, Run(method.n_meis, stopper, tracker)


def ascend(
    evaluate: Evaluate, model: nn.Module, method: MethodConfig, guesses: Sequence[Tensor], runs: Sequence[Run]
) -> list[State]:
    """Optimizes the runs' images together, one optimizer over all of them; returns each run's last state."""
    x = torch.cat(list(guesses)).to(method.device).requires_grad_()
    optimizer = build_component("optimizer", method.components["optimizer"], params=[x])
    operations = {
        role: build_component(role, method.components[role])
        for role in OPERATION_COMPONENTS
        if role in method.components
    }
    transform = operations.get("transform")

    def objective(images: Tensor) -> Tensor:
        return evaluate(images if transform is None else transform(images, 0), None)

    with generation_mode(model, method.device, Probe(objective, x)):
        return optimize(evaluate, x, optimizer, runs, inhibitory=method.inhibitory, **operations)
