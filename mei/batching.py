"""Batched generation: the MEIs of many keys of one model and one method in one gradient ascent.

Every key keeps what it has when generated alone: its own objective unit, its own initial guess (drawn from
its own seed exactly as the one-at-a-time run draws it), its own stopper (a key that stops leaves the batch
while the others go on), its own tracker log and result. One forward and one backward pass per step serve
the whole batch.

Batching is exact only when no image can affect another. That holds for the built-in gradient ascent with
components that declare ``batch_safe``, optimizers that update each element on its own, and objectives that
select one unit of a shared model (``ConstrainedOutputModel``). Anything else runs key by key: correct first,
fast where it can be.
"""

from __future__ import annotations

import gc
import logging
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config import OPERATION_COMPONENTS, MethodConfig
from .errors import ConfigurationError
from .import_utils import import_object
from .methods import ascend, input_shape, start_run
from .modules import ConstrainedOutputModel, selected_outputs, time_window_mean
from .preparation import generation_mode

logger = logging.getLogger(__name__)

GRADIENT_ASCENT = "mei.methods.gradient_ascent"
# Optimizers whose update of an element depends on that element's gradient and state alone.
PER_ELEMENT_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
CPU_BATCH_SIZE = 32
FALLBACK_BATCH_SIZE = 8
MAX_BATCH_SIZE = 1024
# The share of the free GPU memory that a batch may fill; the rest absorbs the estimate's error.
GPU_MEMORY_SHARE = 0.7

Result = tuple[Tensor, float, dict]
Outcome = Result | Exception


@dataclass(frozen=True)
class Target:
    """What an objective asks of its model: one output unit, with the model's keyword arguments."""

    model: nn.Module
    unit: int
    forward_kwargs: Mapping[str, Any]
    time_window: tuple[int | None, int | None] | None = None


def target_of(objective: nn.Module) -> Target | None:
    """The target of an objective that selects one unit of a model (averaged over frames for a video model),
    else ``None`` (it cannot join a batch)."""
    if type(objective) is not ConstrainedOutputModel or objective.target_fn is not None or len(objective.units) != 1:
        return None
    return Target(objective.model, objective.units[0], objective.forward_kwargs, objective.time_window)


class SelectedUnits:
    """The evaluation of a batch: image ``i`` scored on its own unit ``units[i]`` of one shared model."""

    def __init__(
        self,
        model: nn.Module,
        units: Tensor,
        forward_kwargs: Mapping[str, Any],
        time_window: tuple[int | None, int | None] | None = None,
    ) -> None:
        self.model = model
        self.units = units
        self.forward_kwargs = dict(forward_kwargs)
        self.time_window = time_window

    def __call__(self, images: Tensor, rows: Tensor | None) -> Tensor:
        units = self.units if rows is None else self.units[rows]
        selected = selected_outputs(self.model, images, units[:, None], **self.forward_kwargs)
        return time_window_mean(selected, self.time_window)


def why_not_batched(method_fn: str, config: Mapping[str, Any], objectives: Sequence[nn.Module]) -> str | None:
    """Why these generations cannot share a batch exactly, or ``None`` when they can.

    Nothing is built: a config whose components cannot be built is left to fail key by key, with each key's
    own error.
    """
    reason = _why_method_not_batched(method_fn, config)
    if reason is not None:
        return reason
    targets = [target_of(objective) for objective in objectives]
    if None in targets:
        return "an objective is not a ConstrainedOutputModel of one unit without target_fn"
    if len(sub_batches(objectives)) > 1:
        return "the objectives do not share one model and its forward_kwargs"
    return None


def _why_method_not_batched(method_fn: str, config: Mapping[str, Any]) -> str | None:
    if method_fn != GRADIENT_ASCENT:
        return f"the method function {method_fn} is not the built-in {GRADIENT_ASCENT}"
    try:
        method = MethodConfig.parse(config)
        optimizer = import_object(method.components["optimizer"]["path"])
        operations = {role: import_object(method.components[role]["path"]) for role in OPERATION_COMPONENTS
                      if role in method.components}  # fmt: skip
    except Exception as error:
        # Whatever is wrong with the config, each key meets it alone and records it.
        return f"the method config is not valid ({type(error).__name__}: {error})"
    if method.background is not None:
        return "transparency couples a key's images through their mean alpha"
    if optimizer not in PER_ELEMENT_OPTIMIZERS:
        name = getattr(optimizer, "__name__", repr(optimizer))
        return f"the optimizer {name} is not one that acts on each element alone (SGD, Adam, AdamW)"
    for role, operation in operations.items():
        if getattr(operation, "batch_safe", False) is not True:
            return f"the {role} {getattr(operation, '__name__', repr(operation))} does not declare batch_safe = True"
    if method.validation is not None:
        return "the config scores each key on a held-out model (validation)"
    return None


def sub_batches(objectives: Sequence[nn.Module]) -> list[list[int]]:
    """The positions of ``objectives`` grouped by the model and forward keyword arguments their targets share
    (a data key, say), first seen first; an objective that selects no single unit is alone."""
    groups: list[tuple[Target | None, list[int]]] = []
    for index, objective in enumerate(objectives):
        target = target_of(objective)
        for first, members in groups:
            if target is not None and first is not None and _shares(first, target):
                members.append(index)
                break
        else:
            groups.append((target, [index]))
    return [members for _, members in groups]


def _shares(first: Target, second: Target) -> bool:
    return (
        first.model is second.model
        and first.time_window == second.time_window
        and _same(first.forward_kwargs, second.forward_kwargs)
    )


def _same(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Equal keyword arguments; tensors compare by identity (``==`` on them is elementwise)."""
    return first.keys() == second.keys() and all(
        first[name] is second[name] or (not isinstance(first[name], Tensor) and first[name] == second[name])
        for name in first
    )


def gradient_ascent_batch(
    dataloaders: Mapping[str, Any] | None,
    objectives: Sequence[nn.Module],
    config: Mapping[str, Any],
    seeds: Sequence[int],
    *,
    shape: Sequence[int] | None = None,
) -> list[Result]:
    """``gradient_ascent(dataloaders, objectives[i], config, seeds[i])`` for every ``i``, in one batch.

    Raises ``ConfigurationError`` when the generations cannot be batched exactly (``why_not_batched``).
    """
    if len(objectives) != len(seeds) or not seeds:
        raise ValueError(f"give one seed per objective, got {len(seeds)} seeds for {len(objectives)} objectives")
    reason = why_not_batched(GRADIENT_ASCENT, config, objectives)
    if reason is not None:
        raise ConfigurationError(f"these generations cannot be batched: {reason}")
    method = MethodConfig.parse(config)
    batch_shape = input_shape(dataloaders, shape)
    targets = [target_of(objective) for objective in objectives]
    units = torch.tensor([target.unit for target in targets]).repeat_interleave(method.n_meis)
    model = targets[0].model
    forward_kwargs = {**targets[0].forward_kwargs, **method.model_forward_kwargs}
    evaluate = SelectedUnits(model, units.to(method.device), forward_kwargs, targets[0].time_window)
    started = [start_run(method, seed, batch_shape) for seed in seeds]
    finals = ascend(evaluate, model, method, [guess for guess, _ in started], [run for _, run in started])
    return [
        # A key's MEI is a view of the batch: cloned, it is stored alone, not with the whole batch.
        (final.post_processed_input.cpu().clone(), final.evaluation, run.tracker.log)
        for final, (_, run) in zip(finals, started, strict=True)
    ]


def generate_many(
    dataloaders: Mapping[str, Any] | None,
    objectives: Sequence[nn.Module],
    method_fn: str,
    config: Mapping[str, Any],
    seeds: Sequence[int],
    *,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    interrupts: tuple[type[BaseException], ...] = (),
) -> Iterator[tuple[int, Outcome]]:
    """Generates the MEI of each ``(objectives[i], seeds[i])``; yields ``(i, (mei, score, output))`` or
    ``(i, error)`` as each finishes, in batches where that is exact and key by key otherwise.

    A batch that runs out of memory is split in two and retried. A batch that fails otherwise is run again key
    by key, so that the error is recorded against the key that caused it. Exceptions of the types in
    ``interrupts`` (a caller's time limit) are not caught.
    """
    shape_kwargs = {} if shape is None else {"shape": shape}

    def one_at_a_time(indices: Sequence[int]) -> Iterator[tuple[int, Outcome]]:
        for index in indices:
            try:
                method = import_object(method_fn)
                yield index, method(dataloaders, objectives[index], config, seeds[index], **shape_kwargs)
            except interrupts:
                raise
            except Exception as error:
                yield index, error

    def batched(indices: Sequence[int]) -> Iterator[tuple[int, Outcome]]:
        try:
            results = gradient_ascent_batch(
                dataloaders, [objectives[i] for i in indices], config, [seeds[i] for i in indices], shape=shape
            )
        except interrupts:
            raise
        except Exception as error:
            if len(indices) == 1:
                yield indices[0], error
                return
            out_of_memory = is_out_of_memory(error)
            logger.warning("a batch of %d failed (%s)", len(indices), error)
        else:
            yield from zip(indices, results, strict=True)
            return
        # Out of the except block the failed batch's traceback, and the tensors its frames hold, are gone.
        if out_of_memory:
            _release_memory()
            middle = len(indices) // 2
            logger.warning("splitting the batch of %d that ran out of memory in two", len(indices))
            yield from batched(indices[:middle])
            yield from batched(indices[middle:])
        else:
            logger.warning("generating the keys of the failed batch one at a time")
            yield from one_at_a_time(indices)

    reason = _why_method_not_batched(method_fn, config) if objectives else "nothing to generate"
    if reason is not None:
        logger.info("generating %d MEIs one at a time: %s", len(objectives), reason)
        yield from one_at_a_time(range(len(objectives)))
        return
    for group in sub_batches(objectives):
        if target_of(objectives[group[0]]) is None:
            yield from one_at_a_time(group)
            continue
        size = batch_size or configured_batch_size()
        size = size or _estimated_or_fallback(dataloaders, [objectives[group[0]]], config, shape)
        logger.info("generating %d MEIs in batches of up to %d", len(group), size)
        for first in range(0, len(group), size):
            chunk = group[first : first + size]
            # A batch of one is the same generation at a batch's extra cost.
            yield from (one_at_a_time if len(chunk) == 1 else batched)(chunk)


def batch_size_for(
    dataloaders: Mapping[str, Any] | None,
    objective: nn.Module,
    method_fn: str,
    config: Mapping[str, Any],
    shape: Sequence[int] | None = None,
) -> int:
    """How many keys like ``objective``'s (one model and its forward kwargs, one method) this process generates
    in one batch: 1 when they cannot be batched, else ``MEI_BATCH_SIZE`` or ``estimated_batch_size``."""
    if _why_method_not_batched(method_fn, config) is not None or target_of(objective) is None:
        return 1
    return configured_batch_size() or _estimated_or_fallback(dataloaders, [objective], config, shape)


def configured_batch_size(environ: Mapping[str, str] | None = None) -> int | None:
    """``MEI_BATCH_SIZE``: keys per batch, or ``None`` for ``auto`` (the default)."""
    raw = (os.environ if environ is None else environ).get("MEI_BATCH_SIZE", "auto").strip()
    if raw == "auto":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigurationError(f"MEI_BATCH_SIZE must be a positive integer or 'auto', got {raw!r}")
    return int(raw)


def estimated_batch_size(
    dataloaders: Mapping[str, Any] | None,
    objectives: Sequence[nn.Module],
    config: Mapping[str, Any],
    shape: Sequence[int] | None = None,
) -> int:
    """Keys per batch: on a GPU as many as fit in the free memory, measured with a probe step once per model,
    device, input shape and images per key; on the CPU 32 (``docs/performance.md``: larger batches gain
    little there and a batch's first result comes later)."""
    method = MethodConfig.parse(config)
    if method.device.type != "cuda":
        return CPU_BATCH_SIZE
    batch_shape = input_shape(dataloaders, shape)
    target = target_of(objectives[0])
    measured = _measured_sizes.setdefault(target.model, {})
    situation = (str(method.device), batch_shape, method.n_meis)
    if situation not in measured:
        measured[situation] = _fitting_batch_size(target, method, batch_shape)
    return measured[situation]


# Per model (forgotten with it): the batch size measured on a device for an input shape and images per key.
_measured_sizes: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def _fitting_batch_size(target: Target, method: MethodConfig, batch_shape: tuple[int, ...]) -> int:
    probe = 4
    with generation_mode(target.model, method.device):
        torch.cuda.synchronize(method.device)
        torch.cuda.reset_peak_memory_stats(method.device)
        before = torch.cuda.memory_allocated(method.device)
        images = torch.zeros(probe * method.n_meis, *batch_shape[1:], device=method.device, requires_grad=True)
        units = torch.full((probe * method.n_meis,), target.unit, device=method.device)
        forward_kwargs = {**target.forward_kwargs, **method.model_forward_kwargs}
        SelectedUnits(target.model, units, forward_kwargs, target.time_window)(images, None).sum().backward()
        per_key = (torch.cuda.max_memory_allocated(method.device) - before) / probe
        del images
    free, _ = torch.cuda.mem_get_info(method.device)
    return max(1, min(MAX_BATCH_SIZE, int(GPU_MEMORY_SHARE * free / max(per_key, 1))))


def _estimated_or_fallback(
    dataloaders: Mapping[str, Any] | None,
    objectives: Sequence[nn.Module],
    config: Mapping[str, Any],
    shape: Sequence[int] | None,
) -> int:
    try:
        return estimated_batch_size(dataloaders, objectives, config, shape)
    except Exception as error:
        # The batches themselves will meet the same problem and record it against their keys.
        logger.warning("could not measure the memory of one key (%s); batches of %d", error, FALLBACK_BATCH_SIZE)
    _release_memory()
    return FALLBACK_BATCH_SIZE


def is_out_of_memory(error: BaseException) -> bool:
    """True for a failed allocation, on a GPU or on the host."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("out of memory", "can't allocate memory", "not enough memory")
    )


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
