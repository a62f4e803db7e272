"""Stoppers decide after each step whether the optimization ends."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from . import policy
from .domain import State


class OptimizationStopper(ABC):
    """Base class of stoppers: called with each step's state, returns ``(stop, output)``."""

    @abstractmethod
    def __call__(self, current_state: State) -> tuple[bool, Any]:
        """Return ``(True, output)`` to stop after this step, ``(False, output)`` to go on."""

    def fixed_stop(self) -> int | None:
        """The step after which this stopper stops, whatever the states, with output ``None``; ``None`` when it
        depends on the states. A batch calls a stopper with a fixed stop only at that step, not at every one;
        a class that overrides ``__call__`` must define this beside it (this default says: call me every step).
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class NumIterations(OptimizationStopper):
    """Stops once the step with index ``num_iterations`` is done, that is after ``num_iterations + 1`` steps.

    The extra step keeps results identical to the reference framework.
    """

    def __init__(self, num_iterations: int) -> None:
        self.num_iterations = policy.bounded("iterations", _positive_int("num_iterations", num_iterations, minimum=0))

    def __call__(self, current_state: State) -> tuple[bool, None]:
        return current_state.i_iter >= self.num_iterations, None

    def fixed_stop(self) -> int | None:
        return self.num_iterations


class EarlyStopping(OptimizationStopper):
    """Stops when the evaluation has not improved for ``patience`` steps, or at ``max_iter``.

    No stop is made before ``min_iter``. An improvement is an evaluation above the best so far by more than
    ``min_delta``. The output is the best evaluation seen so far.
    """

    def __init__(self, patience: int = 20, min_iter: int = 0, max_iter: int = 1000, min_delta: float = 0.0) -> None:
        self.patience = _positive_int("patience", patience)
        self.min_iter = _positive_int("min_iter", min_iter, minimum=0)
        self.max_iter = policy.bounded("iterations", _positive_int("max_iter", max_iter, minimum=0))
        if self.min_iter > self.max_iter:
            raise ValueError(f"min_iter ({min_iter}) must not exceed max_iter ({max_iter})")
        self.min_delta = float(min_delta)
        self.best = -math.inf
        self.steps_without_improvement = 0

    def __call__(self, current_state: State) -> tuple[bool, float]:
        if current_state.evaluation > self.best + self.min_delta:
            self.best = current_state.evaluation
            self.steps_without_improvement = 0
        else:
            self.steps_without_improvement += 1
        patience_lost = self.steps_without_improvement >= self.patience and current_state.i_iter >= self.min_iter
        return patience_lost or current_state.i_iter >= self.max_iter, self.best
