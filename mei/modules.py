"""Model wrappers: ensembles and objectives that select model outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .readouts import selecting


def selected_outputs(model: nn.Module, x: Tensor, units: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """The outputs ``units[i]`` of image ``i``: ``model(x)[i, units[i]]`` for ``units`` of shape ``(batch, k)``;
    for a video model, whose output is ``(batch, time, neurons)``, ``model(x)[i, :, units[i]]``.

    The selected-outputs contract: a model that defines ``forward_selected(x, units, *args, **kwargs)``
    returning exactly this computes only the outputs asked for (a readout evaluated at a few neurons instead of
    all of them). Otherwise the model is called within ``mei.readouts.selecting``: during generation the lab
    library's readouts then compute the selected neurons only; a model without them computes all of its
    outputs, which are then indexed.
    """
    forward_selected = getattr(model, "forward_selected", None)
    if forward_selected is not None:
        return forward_selected(x, units, *args, **kwargs)
    with selecting(units) as request:
        output = model(x, *args, **kwargs)
    if request.served:
        return output
    # Neurons are the last axis; a video model's time axis comes between.
    rows = torch.arange(output.shape[0], device=output.device)[:, None]
    return output.movedim(-1, 1)[rows, units].movedim(1, -1)


def time_window_mean(selected: Tensor, time_window: tuple[int | None, int | None] | None) -> Tensor:
    """``(batch, k)`` responses: a video model's ``(batch, time, k)`` averaged over the frames
    ``time_window`` (``(start, stop)`` as a slice: ``(-5, None)`` for the last five), images as they are."""
    if time_window is None:
        if selected.dim() == 3:
            raise ValueError(
                f"the model's output has a time axis ({tuple(selected.shape)}: batch, time, units): give the "
                "objective time_window=(start, stop) to average the response over those frames"
            )
        return selected
    if selected.dim() != 3:
        raise ValueError(
            f"time_window={time_window!r} needs a video model's (batch, time, neurons) output, got one of shape "
            f"{tuple(selected.shape)}"
        )
    start, stop = time_window
    window = selected[:, start:stop]
    if window.shape[1] == 0:
        raise ValueError(f"time_window={time_window!r} selects no frame of the model's {selected.shape[1]}")
    return window.mean(dim=1)


class EnsembleModel(nn.Module):
    """Averages the outputs of its members, all given the same input."""

    def __init__(self, *members: nn.Module) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member model")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        outputs = [member(x, *args, **kwargs) for member in self.members]
        return torch.stack(outputs).mean(dim=0)

    def forward_selected(self, x: Tensor, units: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The selected outputs of each member (see ``selected_outputs``), averaged."""
        outputs = [selected_outputs(member, x, units, *args, **kwargs) for member in self.members]
        return torch.stack(outputs).mean(dim=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.members)} members)"


class ConstrainedOutputModel(nn.Module):
    """A model constrained to some of its output units, the usual MEI objective.

    ``constraint`` is one unit index (output shape ``(batch, 1)``) or a list of them. ``target_fn`` maps the
    selected outputs to the objective's value; ``forward_kwargs`` are passed to the model on every call (and
    are overridden by keyword arguments of the call). For a video model (output ``(batch, time, neurons)``),
    ``time_window=(start, stop)`` averages the response over those frames before ``target_fn``.
    """

    def __init__(
        self,
        model: nn.Module,
        constraint: int | Sequence[int],
        target_fn: Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
        time_window: tuple[int | None, int | None] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.constraint = constraint
        self.target_fn = target_fn
        self.forward_kwargs = dict(forward_kwargs or {})
        self.time_window = None if time_window is None else tuple(time_window)

    @property
    def units(self) -> list[int]:
        return [self.constraint] if isinstance(self.constraint, int) else list(self.constraint)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        units = torch.tensor(self.units, device=x.device).expand(x.shape[0], -1)
        selected = selected_outputs(self.model, x, units, *args, **{**self.forward_kwargs, **kwargs})
        selected = time_window_mean(selected, self.time_window)
        return selected if self.target_fn is None else self.target_fn(selected)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, constraint={self.constraint!r})"


class ContrastiveOutputModel(nn.Module):
    """One unit, or a group of them, against others: the most discriminative stimulus (Burg et al., 2024).

    ``target`` and each entry of ``others`` is a unit index or a list of them (a group, e.g. a cluster of cell
    types); a group's response is its units' mean (over ``time_window`` for a video model, as in
    ``ConstrainedOutputModel``). The objective is the log-softmax of the groups' responses divided by
    ``temperature``, taken at the target::

        r_target / T - log(exp(r_target / T) + sum over others of exp(r_other / T))

    It rises with the target's response and falls with the others'. The temperature sets the weighting: a
    low one weights the most responsive competitor almost alone (a margin over it), a high one all groups
    nearly alike (``r_target`` less the groups' mean, scaled by ``1 / T``). With one competitor it is
    ``-softplus((r_other - r_target) / T)``: the difference of the two responses, saturating once the target
    wins by a few ``T``.
    """

    def __init__(
        self,
        model: nn.Module,
        target: int | Sequence[int],
        others: Sequence[int | Sequence[int]],
        temperature: float = 1.0,
        forward_kwargs: Mapping[str, Any] | None = None,
        time_window: tuple[int | None, int | None] | None = None,
    ) -> None:
        super().__init__()
        if not others:
            raise ValueError("a contrastive objective needs at least one unit or group to contrast the target with")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.model = model
        self.groups = [_as_group(target), *(_as_group(group) for group in others)]
        self.temperature = temperature
        self.forward_kwargs = dict(forward_kwargs or {})
        self.time_window = None if time_window is None else tuple(time_window)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        units = [unit for group in self.groups for unit in group]
        chosen = torch.tensor(units, device=x.device).expand(x.shape[0], -1)
        selected = selected_outputs(self.model, x, chosen, *args, **{**self.forward_kwargs, **kwargs})
        responses = time_window_mean(selected, self.time_window).split([len(group) for group in self.groups], 1)
        means = torch.stack([response.mean(dim=1) for response in responses], dim=1)
        return torch.log_softmax(means / self.temperature, dim=1)[:, 0]

    def __repr__(self) -> str:
        target, *others = self.groups
        return f"{type(self).__name__}({self.model!r}, target={target!r}, others={others!r})"


def _as_group(units: int | Sequence[int]) -> list[int]:
    group = [units] if isinstance(units, int) else list(units)
    if not group:
        raise ValueError("a group of units is empty")
    return group
