"""Reporting a running batch to Flower (task events) and to the result backend (task state)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from celery import Task

from mei.domain import State

logger = logging.getLogger(__name__)


class BatchProgress:
    """Sends ``task-progress`` events: how many keys of the task are finished, the running step and the best
    evaluation seen in it. Keys generated together in one batch share their steps.

    Reading an evaluation copies it from the device, so a step is read at most every ``interval`` seconds.
    """

    def __init__(self, task: Task, total: int, interval: float) -> None:
        self.task = task
        self.total = total
        self.interval = interval
        self.done = 0
        self.key: Mapping[str, Any] = {}
        self.best = -math.inf
        self.last_sent = 0.0

    def start(self, done: int) -> None:
        self.done = done
        self.send(iteration=0, evaluation=None)

    def finish_key(self, key: Mapping[str, Any]) -> None:
        self.done, self.key, self.best = self.done + 1, key, -math.inf

    def __call__(self, state: State) -> None:
        if time.monotonic() - self.last_sent >= self.interval:
            self.best = max(self.best, state.evaluation)
            self.send(iteration=state.i_iter, evaluation=state.evaluation)

    def send(self, iteration: int, evaluation: float | None) -> None:
        self.last_sent = time.monotonic()
        info = {
            "keys_done": self.done,
            "keys": self.total,
            "last_key_done": dict(self.key),
            "iteration": iteration,
            "evaluation": evaluation,
            "best_evaluation": None if math.isinf(self.best) else self.best,
        }
        # Flower's task page shows a fixed set of fields: while the task runs, `result` carries the progress.
        summary = (
            f"{self.done} of {self.total} keys done, iteration {iteration}, best evaluation {info['best_evaluation']}"
        )
        try:
            self.task.send_event("task-progress", result=summary, **info)
            if self.task.request.id:
                self.task.update_state(state="PROGRESS", meta=info)
        except Exception as error:  # a monitor that is away must not cost the computation
            logger.warning("progress not reported: %s", error)
