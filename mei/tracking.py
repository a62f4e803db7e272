"""Recording objectives over the course of an optimization."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .domain import State


class Tracker:
    """Calls each objective with every state and logs the values it returns.

    The log maps each objective's name (its config path) to ``{"times": [i_iter, ...], "values": [...]}``.
    An objective that returns ``None`` for a state logs nothing for it.
    """

    def __init__(self, objectives: Mapping[str, Callable[[State], Any]] | None = None) -> None:
        self.objectives = dict(objectives or {})
        self.log: dict[str, dict[str, list]] = {name: {"times": [], "values": []} for name in self.objectives}

    def track(self, state: State) -> None:
        for name, objective in self.objectives.items():
            self.record(name, state.i_iter, objective(state))

    def record(self, name: str, i_iter: int, value: Any) -> None:
        """Logs ``value`` of objective ``name`` at step ``i_iter``; ``None`` logs nothing."""
        if value is not None:
            self.log[name]["times"].append(i_iter)
            self.log[name]["values"].append(value)

    def __repr__(self) -> str:
        return f"Tracker({', '.join(self.objectives)})"
