"""Model wrappers: ensembles and objectives that select model outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def selected_outputs(model: nn.Module, x: Tensor, units: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """The outputs ``units[i]`` of image ``i``: ``model(x)[i, units[i]]`` for ``units`` of shape ``(batch, k)``.

    The selected-outputs contract: a model that defines ``forward_selected(x, units, *args, **kwargs)``
    returning exactly this computes only the outputs asked for (a readout evaluated at a few neurons instead of
    all of them); any other model computes all of its outputs, which are then indexed.
    """
    forward_selected = getattr(model, "forward_selected", None)
    if forward_selected is not None:
        return forward_selected(x, units, *args, **kwargs)
    output = model(x, *args, **kwargs)
    return output[torch.arange(output.shape[0], device=output.device)[:, None], units]


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
    are overridden by keyword arguments of the call).
    """

    def __init__(
        self,
        model: nn.Module,
        constraint: int | Sequence[int],
        target_fn: Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.constraint = constraint
        self.target_fn = target_fn
        self.forward_kwargs = dict(forward_kwargs or {})

    @property
    def units(self) -> list[int]:
        return [self.constraint] if isinstance(self.constraint, int) else list(self.constraint)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        units = torch.tensor(self.units, device=x.device).expand(x.shape[0], -1)
        selected = selected_outputs(self.model, x, units, *args, **{**self.forward_kwargs, **kwargs})
        return selected if self.target_fn is None else self.target_fn(selected)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, constraint={self.constraint!r})"
