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
        depends on the states. A batch skips a stopper with a fixed stop on the steps before it. A class that
        overrides ``__call__`` must define this beside it (this default says: call me every step).

        A stopper whose decision needs only the step and the evaluation may also define, beside ``__call__``,
        ``decide(i_iter, evaluation) -> (stop, output)``, which a batch calls without making a ``State``.
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

    def decide(self, i_iter: int, evaluation: float) -> tuple[bool, None]:
        """``__call__`` from the step and the evaluation alone, which a batch gives without a ``State``."""
        return i_iter >= self.num_iterations, None


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
        return self.decide(current_state.i_iter, current_state.evaluation)

    def decide(self, i_iter: int, evaluation: float) -> tuple[bool, float]:
        """``__call__`` from the step and the evaluation alone, which a batch gives without a ``State``."""
        if evaluation > self.best + self.min_delta:
            self.best = evaluation
            self.steps_without_improvement = 0
        else:
            self.steps_without_improvement += 1
        patience_lost = self.steps_without_improvement >= self.patience and i_iter >= self.min_iter
        return patience_lost or i_iter >= self.max_iter, self.best
