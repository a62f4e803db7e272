"""Model wrappers: ensembles and objectives that select model outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


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

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        output = self.model(x, *args, **{**self.forward_kwargs, **kwargs})
        index = [self.constraint] if isinstance(self.constraint, int) else list(self.constraint)
        selected = output[:, index]
        return selected if self.target_fn is None else self.target_fn(selected)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, constraint={self.constraint!r})"
