"""A straightforward gradient-ascent loop in the style of the reference framework, as a baseline.

It does what REFERENCE.md lists as the reference's costs: the model is evaluated twice per step, model
parameters keep ``requires_grad`` and accumulate gradients, and every step copies five tensors to the host
and reads two numbers from the device. Its results equal ``mei.methods.gradient_ascent``'s. The reference's
``ConstrainedOutputModel`` computes every output of the model and then picks the unit: ``reference_objective``
does the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mei.domain import State
from mei.import_utils import build_component
from mei.modules import ConstrainedOutputModel
from mei.readouts import selecting
from mei.tracking import Tracker


class FullReadout(nn.Module):
    """The model with its selected-outputs path hidden: every output is computed, then indexed."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        with selecting(None):  # the lab library's readouts too compute every neuron
            return self.model(x, *args, **kwargs)


def reference_objective(model: nn.Module, unit: int) -> nn.Module:
    """Unit ``unit`` of ``model``, computed as the reference computed it: all outputs, then one column."""
    return ConstrainedOutputModel(FullReadout(model), unit)


def _identity(x: Tensor, iteration: int) -> Tensor:
    return x


def reference_style_ascent(
    model: nn.Module, config: Mapping[str, Any], seed: int, shape: Sequence[int]
) -> tuple[Tensor, float, dict]:
    torch.manual_seed(seed)
    device = torch.device(config["device"])
    initial = build_component("initial", config["initial"])
    x = initial(config.get("n_meis", 1), *shape[1:]).to(device).requires_grad_()
    optimizer = build_component("optimizer", config["optimizer"], params=[x])
    stopper = build_component("stopper", config["stopper"])
    tracker = Tracker({spec["path"]: build_component("objectives", spec) for spec in config.get("objectives", [])})
    transform, precondition, postprocessing = (
        build_component(role, config[role]) if role in config else _identity
        for role in ("transform", "precondition", "postprocessing")
    )
    model.eval().to(device)
    i_iter = 0
    while True:
        input_ = x.detach().cpu().clone()
        transformed = transform(x, i_iter)
        evaluation = model(transformed).sum()
        reg_term = torch.zeros((), device=device)
        (-evaluation + reg_term).backward()
        grad = x.grad.cpu().clone()
        x.grad = precondition(x.grad, i_iter)
        preconditioned_grad = x.grad.cpu().clone()
        evaluation_value = model(transform(x, i_iter)).sum().item()
        optimizer.step()
        x.data = postprocessing(x.data, i_iter)
        state = State(
            i_iter=i_iter,
            evaluation=evaluation_value,
            reg_term=reg_term.item(),
            input_=input_,
            transformed_input=transformed.detach().cpu().clone(),
            post_processed_input=x.detach().cpu().clone(),
            grad=grad,
            preconditioned_grad=preconditioned_grad,
        )
        stop, state.stopper_output = stopper(state)
        tracker.track(state)
        optimizer.zero_grad()
        if stop:
            return state.post_processed_input, state.evaluation, tracker.log
        i_iter += 1
