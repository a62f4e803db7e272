"""The gradient-ascent loop."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .domain import BatchStep, State
from .errors import GradientError
from .progress import current_observer
from .tracking import Tracker
from .transparency import Transparency

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
    transparency: Transparency | None = None,
) -> list[State]:
    """Runs gradient ascent on the leaf tensor ``x`` until every run's stopper says stop; returns their last states.

    ``x`` holds the images of the runs one after the other. ``evaluate(images, rows)`` returns the objective
    of each image; ``rows`` are the positions in the original ``x`` of the images still optimized (``None``
    while all are). The loss is ``-(sum of evaluations) + sum of regularization terms``: summing over images
    keeps each image's gradient its own. A run that stops leaves the batch (its rows are dropped from ``x`` and
    from the optimizer's state) while the others go on. Values stay on the device; a ``State`` copies them to
    the host only when read, and is made only for the steps on which a stopper or a tracker needs it (``Plan``).
    With ``transparency`` (one run), the model sees the image blended over a background instead of the
    transform's output, and the loss is the reference's (``mei.transparency``).
    """
    observer = current_observer()
    single = len(runs) == 1
    active = list(runs)
    plan = Plan(active)
    rows: Tensor | None = None
    input_ = x.detach().clone()
    i_iter = 0
    while True:
        transformed, evaluations, reg_term, loss = _forward(
            x, i_iter, rows, evaluate, transform, regularization, transparency, inhibitory=inhibitory, single=single
        )
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
        stopped = plan.settle(step, active)
        if observer is not None:
            observer(step.state(plan.rows[0]))
        going = [run.final is None for run in active] if stopped else [True]
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


def _forward(
    x: Tensor,
    i_iter: int,
    rows: Tensor | None,
    evaluate: Evaluate,
    transform: Operation | None,
    regularization: Operation | None,
    transparency: Transparency | None,
    *,
    inhibitory: bool,
    single: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step's forward pass: the model's input, the evaluation of each image, the regularization terms and
    the loss to minimise."""
    n_images = x.shape[0]
    if transparency is not None:
        transformed = transparency.model_input(x, i_iter)
    else:
        transformed = x if transform is None else transform(x, i_iter)
    evaluations = per_image_evaluations(evaluate(transformed, rows), n_images, joint_allowed=single)
    if inhibitory:
        evaluations = -evaluations
    if transparency is not None:
        mean_alpha = transparency.mean_alpha(x)
        reg_term = torch.zeros(()) if regularization is None else torch.as_tensor(regularization(mean_alpha, i_iter))
        return transformed, evaluations, reg_term, transparency.loss(evaluations, reg_term, mean_alpha)
    if regularization is None:
        reg_term = torch.zeros(())
    else:
        reg_term = per_image_terms(regularization(transformed, i_iter), n_images, joint_allowed=single)
    return transformed, evaluations, reg_term, reg_term.sum() - evaluations.sum()


def _declared_beside(component: Any, name: str, beside: str = "__call__") -> Any:
    """The component's attribute ``name`` when the class that defines its ``beside`` method defines it too, else
    ``None``: a subclass that changes ``beside`` alone does not inherit a hint about it."""
    return getattr(component, name) if _defined_together(type(component), name, beside) else None


@functools.cache
def _defined_together(cls: type, name: str, beside: str) -> bool:
    # Cached per class: a plan is rebuilt each time a run leaves the batch.
    owner = next((klass for klass in cls.__mro__ if beside in vars(klass)), None)
    return owner is not None and name in vars(owner)


def _hint(component: Any, name: str) -> Any:
    """What the hint method ``name`` of a component says, trusted only from the class of its ``__call__``."""
    hint = _declared_beside(component, name)
    return None if hint is None else hint()


class Plan:
    """The rows of each active run, and how much per-run work each step needs.

    - A step before every run's fixed stop (``OptimizationStopper.fixed_stop``) on which no objective of any
      run is due (``Objective.record_interval``) needs none: it is skipped.
    - When every run's stopper decides from the step and the evaluation alone (``decide``) and every objective
      can be recorded for the whole batch (``batch_values``), a step makes no ``State`` but for the runs that
      stop: the evaluations reach the host in one copy, and each run costs a few list operations.
    - Otherwise each run's stopper and tracker are called with its ``State``, as alone.

    Each hint is trusted only from the class that defines the method it describes (``__call__``, ``compute``),
    so a subclass that changes that method alone is called every step. On a GPU this keeps the host ahead of
    the device.
    """

    def __init__(self, runs: Sequence[Run]) -> None:
        self.rows = [slice(None)] if len(runs) == 1 else _slices(runs)
        stops = [_hint(run.stopper, "fixed_stop") for run in runs]
        self.next_stop = None if None in stops else min(stops)
        objectives = [objective for run in runs for objective in run.tracker.objectives.values()]
        intervals = [_hint(objective, "record_interval") for objective in objectives]
        self.intervals = None if None in intervals else sorted(set(intervals))
        deciders = [_declared_beside(run.stopper, "decide") for run in runs]
        recorders = _batch_recorders(runs)
        self.batch = None if None in deciders or recorders is None else (deciders, recorders)

    def quiet(self, i_iter: int) -> bool:
        """Whether no stopper and no tracker of any run has anything to do at step ``i_iter``."""
        if self.next_stop is None or self.intervals is None or i_iter >= self.next_stop:
            return False
        return all(i_iter % interval for interval in self.intervals)

    def settle(self, step: BatchStep, runs: Sequence[Run]) -> bool:
        """Calls the runs' stoppers and trackers as step ``step`` needs, sets ``final`` on the runs that stop;
        returns whether any run may have stopped."""
        if self.quiet(step.i_iter):
            return False
        if self.batch is None:
            for run, images in zip(runs, self.rows, strict=True):
                state = step.state(images)
                stop, state.stopper_output = run.stopper(state)
                run.tracker.track(state)
                if stop:
                    run.final = state
            return True
        deciders, recorders = self.batch
        for run, images, decide in zip(runs, self.rows, deciders, strict=True):
            stop, output = decide(step.i_iter, step.evaluation(images))
            if stop:
                run.final = step.state(images)
                run.final.stopper_output = output
        for name, (interval, batch_values) in recorders.items():
            if step.i_iter % interval == 0:
                for run, value in zip(runs, batch_values(step, self.rows), strict=True):
                    run.tracker.record(name, step.i_iter, value)
        return True


def _batch_recorders(runs: Sequence[Run]) -> dict[str, tuple[int, Callable]] | None:
    """``{name: (interval, batch_values)}`` when every run's objective of every name can be recorded for the
    whole batch (the same class, the same trusted interval, a ``batch_values`` beside its ``compute``), else
    ``None``."""
    recorders = {}
    if any(run.tracker.objectives.keys() != runs[0].tracker.objectives.keys() for run in runs):
        return None
    for name in runs[0].tracker.objectives:
        objectives = [run.tracker.objectives.get(name) for run in runs]
        kinds = {type(objective) for objective in objectives}
        intervals = {_hint(objective, "record_interval") for objective in objectives}
        batch_values = _declared_beside(objectives[0], "batch_values", beside="compute")
        if len(kinds) != 1 or len(intervals) != 1 or None in intervals or batch_values is None:
            return None
        recorders[name] = (intervals.pop(), batch_values)
    return recorders


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
