"""The models the benchmarks run, by name: what each is, how to build it, and an objective on one of its neurons.

- ``sensorium``: ``bench/sensorium.py``, the Sensorium 2022 architecture in plain PyTorch, 5 x 8,000, with its
  own ``forward_selected``;
- ``neuralpredictors``: the Sensorium 2022 baseline built with the lab library itself (``bench/lab_model.py``),
  5 x 8,000, called with ``data_key``, no ``forward_selected``;
- ``tiny``: the small variant of ``sensorium``, a quick check of a benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bench import lab_model, sensorium
from mei.modules import ConstrainedOutputModel


@dataclass(frozen=True)
class BenchModel:
    description: str
    build: Callable[[], nn.Module]
    neurons: int
    input_shape: tuple[int, ...] = sensorium.FULL.input_shape
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    def objective(self, model: nn.Module, unit: int) -> ConstrainedOutputModel:
        """Neuron ``unit`` of ``model`` (built by ``build``), as a lab's objective table gives it."""
        return ConstrainedOutputModel(model, unit % self.neurons, forward_kwargs=self.forward_kwargs)

    @property
    def shape(self) -> tuple[int, ...]:
        """One input batch's shape, as ``gradient_ascent`` takes it."""
        return (1, *self.input_shape)


MODELS = {
    "sensorium": BenchModel(
        "bench/sensorium.py: 4 layers, 64 channels, 8,000 neurons, 5 members, forward_selected",
        lambda: sensorium.build_ensemble(sensorium.FULL),
        sensorium.FULL.neurons,
    ),
    "neuralpredictors": BenchModel(
        "neuralpredictors 0.3.0 Sensorium 2022 baseline: Stacked2dCore, FullGaussian2d, FiringRateEncoder; "
        "8,000 neurons, 5 members",
        lab_model.build_ensemble,
        8000,
        forward_kwargs={"data_key": lab_model.DATA_KEY},
    ),
    "tiny": BenchModel(
        "bench/sensorium.py tiny: 2 layers, 8 channels, 50 neurons, 5 members",
        lambda: sensorium.build_ensemble(sensorium.TINY),
        sensorium.TINY.neurons,
    ),
}
