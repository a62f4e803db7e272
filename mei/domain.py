"""The state of one optimization step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class BatchValues:
    """Per-image values of a whole batch, left on the device until one run of the batch reads its rows.

    The first read copies the whole batch to the host at once: one device sync per step, however many runs
    (keys) share the batch.
    """

    def __init__(self, values: Tensor) -> None:
        self._device_values: Tensor | None = values.detach()
        self._host_values: list[float] = []

    def rows(self, rows: slice) -> list[float]:
        if self._device_values is not None:
            self._host_values = self._device_values.float().reshape(-1).tolist()
            self._device_values = None
        return self._host_values[rows]


class Rows:
    """The rows of one run in a ``BatchValues``."""

    def __init__(self, batch: BatchValues, rows: slice = slice(None)) -> None:
        self.batch = batch
        self.rows = rows

    def values(self) -> list[float]:
        return self.batch.rows(self.rows)


def _host_values(value: float | Tensor | Rows) -> list[float]:
    if isinstance(value, Rows):
        return value.values()
    if isinstance(value, Tensor):
        return value.detach().float().reshape(-1).tolist()
    return [float(value)]


class State:
    """What one step of the optimization saw and did.

    ``evaluation`` and ``reg_term`` are floats. During generation they are kept on the device and turned into
    floats on first access, so a step that nobody inspects costs no device-to-host copy. Tensors live on the
    device the MEI is generated on; clone them to keep them beyond the step.

    With several images per key (``n_meis > 1``) ``evaluation`` and ``reg_term`` are the means over the
    images; ``evaluations`` gives the evaluation of each image.
    """

    def __init__(
        self,
        i_iter: int,
        evaluation: float | Tensor | Rows,
        reg_term: float | Tensor | Rows,
        input_: Tensor,
        transformed_input: Tensor,
        post_processed_input: Tensor,
        grad: Tensor,
        preconditioned_grad: Tensor,
        stopper_output: Any = None,
    ) -> None:
        self.i_iter = i_iter
        self._evaluation = evaluation
        self._reg_term = reg_term
        self.input_ = input_
        self.transformed_input = transformed_input
        self.post_processed_input = post_processed_input
        self.grad = grad
        self.preconditioned_grad = preconditioned_grad
        self.stopper_output = stopper_output

    @property
    def evaluation(self) -> float:
        return _mean(self.evaluations)

    @property
    def evaluations(self) -> list[float]:
        """The evaluation of each image (one number when the objective scores the images jointly)."""
        if not isinstance(self._evaluation, list):
            self._evaluation = _host_values(self._evaluation)
        return self._evaluation

    @property
    def reg_term(self) -> float:
        if not isinstance(self._reg_term, float):
            self._reg_term = _mean(_host_values(self._reg_term))
        return self._reg_term

    def __repr__(self) -> str:
        return f"State(i_iter={self.i_iter}, evaluation={self.evaluation:.6g}, reg_term={self.reg_term:.6g})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        tensors = ("input_", "transformed_input", "post_processed_input", "grad", "preconditioned_grad")
        return (
            self.i_iter == other.i_iter
            and self.evaluation == other.evaluation
            and self.reg_term == other.reg_term
            and all(torch.equal(getattr(self, name), getattr(other, name)) for name in tensors)
            and self.stopper_output == other.stopper_output
        )

    __hash__ = None  # type: ignore[assignment]


class BatchStep:
    """What one step saw and did for a whole batch; each run's ``State`` is a view of its rows, made when asked
    for, whose tensors are sliced only when read."""

    def __init__(
        self,
        i_iter: int,
        evaluations: Tensor,
        reg_terms: Tensor,
        input_: Tensor,
        transformed_input: Tensor,
        post_processed_input: Tensor,
        grad: Tensor,
        preconditioned_grad: Tensor,
    ) -> None:
        self.i_iter = i_iter
        self.evaluations = BatchValues(evaluations)
        self.reg_terms = BatchValues(reg_terms)
        self.joint_reg_term = reg_terms.dim() == 0
        self.input_ = input_
        self.transformed_input = transformed_input
        self.post_processed_input = post_processed_input
        self.grad = grad
        self.preconditioned_grad = preconditioned_grad

    def state(self, images: slice) -> State:
        return RunState(self, images)

    def evaluation(self, images: slice) -> float:
        """``state(images).evaluation``, without making the state."""
        return _mean(self.evaluations.rows(images))


def _rows_of(name: str) -> property:
    return property(lambda self: getattr(self._step, name)[self._images])


class RunState(State):
    """One run's rows of a ``BatchStep``, as a ``State``."""

    input_ = _rows_of("input_")
    transformed_input = _rows_of("transformed_input")
    post_processed_input = _rows_of("post_processed_input")
    grad = _rows_of("grad")
    preconditioned_grad = _rows_of("preconditioned_grad")

    def __init__(self, step: BatchStep, images: slice) -> None:
        self._step = step
        self._images = images
        self.i_iter = step.i_iter
        self._evaluation = Rows(step.evaluations, images)
        self._reg_term = Rows(step.reg_terms, slice(None) if step.joint_reg_term else images)
        self.stopper_output = None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
