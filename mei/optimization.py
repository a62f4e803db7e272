"""The gradient-ascent loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .domain import BatchValues, Rows, State
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
    the host only when read.
    """
    observer = current_observer()
    single = len(runs) == 1
    active = list(runs)
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
        batch_evaluations, batch_reg_terms = BatchValues(evaluations), BatchValues(reg_term)
        transformed_input = input_ if transformed is x else transformed.detach()
        first = 0
        for run in active:
            images = slice(None) if len(active) == 1 else slice(first, first + run.size)
            first += run.size
            state = State(
                i_iter=i_iter,
                evaluation=Rows(batch_evaluations, images),
                reg_term=Rows(batch_reg_terms, images if reg_term.dim() else slice(None)),
                input_=input_[images],
                transformed_input=transformed_input[images],
                post_processed_input=post_processed[images],
                grad=grad[images],
                preconditioned_grad=preconditioned[images],
            )
            stop, state.stopper_output = run.stopper(state)
            run.tracker.track(state)
            if observer is not None and run is active[0]:
                observer(state)
            if stop:
                run.final = state
        going = [run.final is None for run in active]
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
        i_iter += 1


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
