"""Objectives: quantities tracked over the course of an optimization."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from .domain import BatchStep, State


class Objective(ABC):
    """Base class of objectives: called with each state, returns a value to log or ``None``."""

    @abstractmethod
    def __call__(self, current_state: State) -> Any: ...

    def record_interval(self) -> int | None:
        """``n`` when this objective returns ``None`` on every step but those with ``i_iter % n == 0``, which a
        batch then skips; ``None`` when any step may be recorded. A class that overrides ``__call__`` must
        define this beside it (this default says: call me every step)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class RegularIntervalObjective(Objective):
    """Computes its value every ``interval`` steps (when ``i_iter % interval == 0``)."""

    def __init__(self, interval: int) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        self.interval = interval

    def __call__(self, current_state: State) -> Any:
        if current_state.i_iter % self.interval == 0:
            return self.compute(current_state)
        return None

    def record_interval(self) -> int | None:
        return self.interval

    @abstractmethod
    def compute(self, current_state: State) -> Any: ...


class EvaluationObjective(RegularIntervalObjective):
    """The model's evaluation of the current input."""

    def compute(self, current_state: State) -> float:
        return current_state.evaluation

    @staticmethod
    def batch_values(step: BatchStep, rows: Sequence[slice]) -> list[float]:
        """``compute`` for each run of a batch at once: the evaluation of the images in each of ``rows``."""
        return [step.evaluation(images) for images in rows]


class PostProcessedInputObjective(RegularIntervalObjective):
    """A copy of the post-processed input, on the CPU."""

    def compute(self, current_state: State) -> Any:
        return current_state.post_processed_input.detach().cpu().clone()
