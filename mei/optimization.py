"""The gradient-ascent loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .domain import BatchStep, State
from .errors import GradientError
from .progress import current_observer
from .tracking import Tracker

Operation = Callable[[Tensor, int], Tensor]


def per_image_evaluations(output: Tensor, n_images: int, *, joint_allowed: bool = True) -> Tensor:
    """One evaluation per image, or a single one when the objective scores all images jointly."""
    if not isinstance(output, Tensor):
        raise TypeError(f"the objective model must return a tensor, got {type(output).__name__}")
    if output.numel() == n_images:
        return output.reshape(n_images)
    if output.numel() == 1 and joint_allowed:
        return output.reshape(1)
    raise ValueError(
        f"the objective model returned an output of shape {tuple(output.shape)} for {n_images} image(s): it "
        "must return one value per image (for example ConstrainedOutputModel with a single unit)"
        + (" or one value for all of them" if joint_allowed else "")
    )


def per_image_terms(reg_term: Tensor, n_images: int, *, joint_allowed: bool = True) -> Tensor:
    """A regularization's terms: one per image, or (for a single run) any shape, summed into the loss."""
    reg_term = torch.as_tensor(reg_term)
    if joint_allowed or reg_term.numel() == n_images:
        return reg_term
    raise ValueError(
        f"the regularization returned a term of shape {tuple(reg_term.shape)} for {n_images} images: batched "
        "generation needs one term per image (an Operation with batch_safe = True)"
    )


@dataclass
class Run:
    """The images of one generation (one key) within a batch: how many, when to stop, what to record."""

    size: int
    stopper: Callable[[State], tuple[bool, Any]]
    tracker: Tracker
    final: State | None = None


Evaluate = Callable[[Tensor, Tensor | None], Tensor]


def optimize(
    evaluate: Evaluate,
    x: Tensor,
    optimizer: torch.optim.Optimizer,
    runs: Sequence[Run],
    *,
    transform: Operation | None = None,
    regularization: Operation | None = None,
    precondition: Operation | None = None,
    postprocessing: Operation | None = None,
    inhibitory: bool = False,
) -> list[State]:
    """Runs gradient ascent on the leaf tensor ``x`` until every run's stopper says stop; returns their last states.

    ``x`` holds the images of the runs one after the other. ``evaluate(images, rows)`` returns the objective
    of each image; ``rows`` are the positions in the original ``x`` of the images still optimized (``None``
    while all are). The loss is ``-(sum of evaluations) + sum of regularization terms``: summing over images
    keeps each image's gradient its own. A run that stops leaves the batch (its rows are dropped from ``x`` and
    from the optimizer's state) while the others go on. Values stay on the device; a ``State`` copies them to
    the host only when read, and is made only for the steps on which a stopper or a tracker needs it (``Plan``).
    """
    observer = current_observer()
    single = len(runs) == 1
    active = list(runs)
    plan = Plan(active)
    rows: Tensor | None = None
    input_ = x.detach().clone()
    i_iter = 0
    while True:
        n_images = x.shape[0]
        transformed = x if transform is None else transform(x, i_iter)
        evaluations = per_image_evaluations(evaluate(transformed, rows), n_images, joint_allowed=single)
        if inhibitory:
            evaluations = -evaluations
        reg_term = (
            torch.zeros(())
            if regularization is None
            else per_image_terms(regularization(transformed, i_iter), n_images, joint_allowed=single)
        )
        loss = reg_term.sum() - evaluations.sum()
        x.grad = None
        if not loss.requires_grad:
            raise GradientError("Gradient did not reach MEI: the model's output does not depend on its input")
        loss.backward()
        if x.grad is None:
            raise GradientError("Gradient did not reach MEI: the transform or the model detached the input")
        grad = x.grad
        preconditioned = grad if precondition is None else precondition(grad, i_iter)
        # The optimizer may work in place on what it is given; the state keeps its own tensors.
        x.grad = grad.clone() if preconditioned is grad else preconditioned
        optimizer.step()
        if postprocessing is not None:
            with torch.no_grad():
                x.data = postprocessing(x.detach(), i_iter)
        post_processed = x.detach().clone()
        transformed_input = input_ if transformed is x else transformed.detach()
        step = BatchStep(i_iter, evaluations, reg_term, input_, transformed_input, post_processed, grad, preconditioned)
        quiet = plan.quiet(i_iter)
        if not quiet:
            for run, images in zip(active, plan.rows, strict=True):
                state = step.state(images)
                stop, state.stopper_output = run.stopper(state)
                run.tracker.track(state)
                if stop:
                    run.final = state
        if observer is not None:
            observer(step.state(plan.rows[0]))
        going = [True] if quiet else [run.final is None for run in active]
        if not any(going):
            return [run.final for run in runs]
        if all(going):
            input_ = post_processed
        else:
            kept = _rows_of(active, going, x.device)
            rows = kept if rows is None else rows[kept]
            x = _keep_rows(x, optimizer, kept)
            input_ = post_processed[kept]
            active = [run for run, goes in zip(active, going, strict=True) if goes]
            plan = Plan(active)
        i_iter += 1


def _hint(component: Any, name: str) -> Any:
    """What the hint method ``name`` of a component says, trusted only when the class that defines the
    component's ``__call__`` defines the hint too (a subclass that changes ``__call__`` alone gets ``None``)."""
    owner = next((cls for cls in type(component).__mro__ if "__call__" in vars(cls)), None)
    if owner is None or name not in vars(owner):
        return None
    return getattr(component, name)()


class Plan:
    """The rows of each active run, and which steps need the runs' stoppers and trackers at all.

    A step before every run's fixed stop (``OptimizationStopper.fixed_stop``) on which no objective of any run
    is due (``Objective.record_interval``) needs none of them: the batch skips the per-run work, which on a GPU
    would otherwise keep the device waiting for the host. A run with a stopper or an objective that gives no
    such hint is called every step, as it would be alone.
    """

    def __init__(self, runs: Sequence[Run]) -> None:
        self.rows = [slice(None)] if len(runs) == 1 else _slices(runs)
        stops = [_hint(run.stopper, "fixed_stop") for run in runs]
        self.next_stop = None if None in stops else min(stops)
        objectives = [objective for run in runs for objective in run.tracker.objectives.values()]
        intervals = [_hint(objective, "record_interval") for objective in objectives]
        self.intervals = None if None in intervals else sorted(set(intervals))

    def quiet(self, i_iter: int) -> bool:
        """Whether no stopper and no tracker of any run has anything to do at step ``i_iter``."""
        if self.next_stop is None or self.intervals is None or i_iter >= self.next_stop:
            return False
        return all(i_iter % interval for interval in self.intervals)


def _slices(runs: Sequence[Run]) -> list[slice]:
    slices, first = [], 0
    for run in runs:
        slices.append(slice(first, first + run.size))
        first += run.size
    return slices


def _rows_of(runs: Sequence[Run], going: Sequence[bool], device: torch.device) -> Tensor:
    kept, first = [], 0
    for run, goes in zip(runs, going, strict=True):
        if goes:
            kept.extend(range(first, first + run.size))
        first += run.size
    return torch.tensor(kept, device=device)


def _keep_rows(x: Tensor, optimizer: torch.optim.Optimizer, kept: Tensor) -> Tensor:
    """A new leaf holding the rows ``kept`` of ``x``, with the optimizer's per-element state cut the same way.

    Exact for optimizers whose update of an element depends on that element alone (see ``PER_ELEMENT_OPTIMIZERS``).
    """
    smaller = x.detach()[kept].requires_grad_()
    state = optimizer.state.pop(x, {})
    optimizer.state[smaller] = {
        name: value[kept] if isinstance(value, Tensor) and value.shape == x.shape else value
        for name, value in state.items()
    }
    (group,) = optimizer.param_groups
    group["params"] = [smaller]
    return smaller
