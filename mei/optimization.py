"""The gradient-ascent loop and the model preparation around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .domain import State
from .errors import GradientError
from .progress import current_observer
from .tracking import Tracker

Operation = Callable[[Tensor, int], Tensor]


@contextmanager
def generation_mode(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Moves the model to ``device`` in eval mode with frozen parameters; restores mode and flags after."""
    parameters = list(model.parameters())
    requires_grad = [parameter.requires_grad for parameter in parameters]
    was_training = model.training
    model.to(device)
    model.eval()
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in zip(parameters, requires_grad, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)


def per_image_evaluations(output: Tensor, n_images: int) -> Tensor:
    """One evaluation per image, or a single one when the objective scores all images jointly."""
    if not isinstance(output, Tensor):
        raise TypeError(f"the objective model must return a tensor, got {type(output).__name__}")
    if output.numel() == n_images:
        return output.reshape(n_images)
    if output.numel() == 1:
        return output.reshape(1)
    raise ValueError(
        f"the objective model returned an output of shape {tuple(output.shape)} for {n_images} image(s): it "
        "must return one value per image (for example ConstrainedOutputModel with a single unit) or one "
        "value for all of them"
    )


def optimize(
    model: nn.Module,
    x: Tensor,
    optimizer: torch.optim.Optimizer,
    stopper: Callable[[State], tuple[bool, Any]],
    tracker: Tracker,
    *,
    transform: Operation | None = None,
    regularization: Operation | None = None,
    precondition: Operation | None = None,
    postprocessing: Operation | None = None,
    inhibitory: bool = False,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> State:
    """Runs gradient ascent on the leaf tensor ``x`` until the stopper says stop; returns the last state.

    The loss is ``-(sum of evaluations) + sum of regularization terms``: summing over images keeps each
    image's gradient its own. Values stay on the device; the ``State`` converts them only when read.
    """
    forward_kwargs = dict(forward_kwargs or {})
    observer = current_observer()
    n_images = x.shape[0]
    input_ = x.detach().clone()
    i_iter = 0
    while True:
        transformed = x if transform is None else transform(x, i_iter)
        evaluations = per_image_evaluations(model(transformed, **forward_kwargs), n_images)
        if inhibitory:
            evaluations = -evaluations
        reg_term = torch.zeros(()) if regularization is None else torch.as_tensor(regularization(transformed, i_iter))
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
        state = State(
            i_iter=i_iter,
            evaluation=evaluations.detach(),
            reg_term=reg_term.detach(),
            input_=input_,
            transformed_input=input_ if transformed is x else transformed.detach(),
            post_processed_input=post_processed,
            grad=grad,
            preconditioned_grad=preconditioned,
        )
        stop, state.stopper_output = stopper(state)
        tracker.track(state)
        if observer is not None:
            observer(state)
        if stop:
            return state
        input_ = post_processed
        i_iter += 1
