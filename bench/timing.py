"""Time per step apart from the fixed cost of a generation.

A generation pays once for its setup (drawing the initial guess, building components, preparing the model)
and then per step. Timing a short run and dividing by its steps would charge the setup to a handful of steps
instead of the thousand a real MEI takes, so each measurement times a run of one step and a run of ``steps``
steps back to back (in alternating order): the difference is the cost of ``steps - 1`` steps, the rest of
the one-step run is the fixed cost. With ``steps = 11`` and an objective tracked every 10 steps, the extra
steps include one tracked step in ten, as a long run does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# run(seed, steps): one generation (or one batch of them) of ``steps`` steps.
Runner = Callable[[int, int], object]


@dataclass(frozen=True)
class Timing:
    """One paired measurement: the seconds of a one-step run and of a ``steps``-step run."""

    one_step_seconds: float
    many_steps_seconds: float
    steps: int

    @property
    def seconds_per_step(self) -> float:
        return (self.many_steps_seconds - self.one_step_seconds) / (self.steps - 1)

    @property
    def fixed_seconds(self) -> float:
        return self.one_step_seconds - self.seconds_per_step

    def seconds(self, steps: int) -> float:
        """The estimated seconds of a run of ``steps`` steps."""
        return self.fixed_seconds + steps * self.seconds_per_step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(run: Callable[[], object], device: str) -> float:
    """Seconds of one call of ``run``, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def measure_once(run: Runner, seed: int, steps: int, device: str, *, long_first: bool = False) -> Timing:
    """A paired measurement of ``run``: a one-step run and a ``steps``-step run, in the order asked for."""
    if steps < 2:
        raise ValueError(f"measure at least 2 steps, got {steps}")
    if long_first:
        many = timed(lambda: run(seed, steps), device)
        one = timed(lambda: run(seed, 1), device)
    else:
        one = timed(lambda: run(seed, 1), device)
        many = timed(lambda: run(seed, steps), device)
    return Timing(one, many, steps)
