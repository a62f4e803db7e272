"""Generating the MEIs of one batch of keys, each recorded in the table's jobs.

A key is computed only while this task holds its reservation, and its row is inserted in the same
transaction that removes its job, after checking that the job is still this task's: a key withdrawn
(cancelled) meanwhile writes nothing, and a key computed twice (a redelivered message) is written once.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import deepdiff
from celery.exceptions import SoftTimeLimitExceeded

from mei.progress import observing
from mei_service import jobs
from mei_service.failures import is_transient
from workers.progress import BatchProgress

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    done: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    released: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {name: len(keys) for name, keys in vars(self).items()}


@contextmanager
def _inserts_allowed(table: Any) -> Iterator[None]:
    # DataJoint admits inserts into an auto-populated table while this class flag is set, as populate() does.
    table.__class__._allow_insert = True
    try:
        yield
    finally:
        table.__class__._allow_insert = False


def fetch_hash(fetched: tuple) -> str:
    """What ``populate`` compares to tell that a key's inputs changed while it was computed."""
    return deepdiff.DeepHash(fetched, ignore_iterable_order=False)[fetched]


def store(
    table: Any, key: Mapping[str, Any], task_id: str, fetched: tuple, computed: tuple, started: float | None = None
) -> bool:
    """Inserts one key's computed MEI and completes its job, in one transaction; False when the job was
    withdrawn. As ``populate`` does, the inputs are fetched again and compared by their hash, and the row
    records when its generation ``started`` (``jobs.complete``)."""
    instance = table()
    with instance.connection.transaction:
        if not jobs.holds(table, key, task_id):
            return False
        if not instance & key:
            if fetch_hash(instance.make_fetch(dict(key))) != fetch_hash(fetched):
                raise RuntimeError(f"the inputs of {dict(key)} changed while its MEI was generated")
            with _inserts_allowed(instance):
                instance.make_insert(dict(key), *computed)
        jobs.complete(table, key, started)
    return True


def run_batch(table: Any, keys: Sequence[Mapping[str, Any]], task_id: str, progress: BatchProgress) -> BatchResult:
    """Claims the batch's keys, and queued keys like them up to the device's batch, and generates them, many in
    one gradient ascent where the method allows.

    A permanent error fails its key (message and traceback in the jobs table) and the batch goes on. A lost
    connection propagates so that the task is retried; the keys stay reserved under this task's id, which the
    retry reclaims. A soft time limit gives the unfinished keys back, and fails the first of them when none
    had finished: a key that alone outlasts the limit would otherwise come back for ever.
    """
    claimed = jobs.claim(table, keys, task_id)
    result = BatchResult(skipped=[dict(key) for key in keys if dict(key) not in claimed])
    instance = table()
    claimed += _fill_batch(table, instance, claimed, task_id)
    progress.total = len(claimed) + len(result.skipped)
    pending = []
    for key in claimed:
        if instance & key:
            jobs.complete(table, key)
            result.done.append(key)
        elif jobs.holds(table, key, task_id):
            pending.append(key)
        else:
            result.skipped.append(key)
    ready, fetched = [], []
    for key in pending:
        try:
            fetched.append(instance.make_fetch(dict(key)))
        except SoftTimeLimitExceeded:
            raise
        except Exception as error:
            _record_failure(table, key, task_id, error, result)
        else:
            ready.append(key)
    unfinished = set(range(len(ready)))
    progress.start(len(result.done))
    started = time.monotonic()
    try:
        with observing(progress):
            outcomes = instance.make_compute_many(ready, fetched, interrupts=(SoftTimeLimitExceeded,))
            for index, outcome in outcomes:
                progress.finish_key(ready[index])
                _settle(table, ready[index], task_id, fetched[index], outcome, started, result)
                unfinished.discard(index)
    except SoftTimeLimitExceeded:
        keys_left = [ready[index] for index in sorted(unfinished)]
        if keys_left and len(keys_left) == len(ready):
            message = (
                f"SoftTimeLimitExceeded: the batch of {len(ready)} keys ran past MEI_SERVICE_TASK_TIME_LIMIT; "
                "raise the limit or lower MEI_BATCH_SIZE (keys generated together)"
            )
            jobs.fail(table, keys_left[0], task_id, message, traceback.format_exc())
            result.failed.append(keys_left.pop(0))
        result.released = jobs.release(table, keys_left, task_id)
    return result


def _fill_batch(table: Any, instance: Any, claimed: list[dict], task_id: str) -> list[dict]:
    """More queued keys of the first key's trained model and method, claimed up to the batch the device takes:
    tasks carry a few keys each, a GPU batch may take hundreds."""
    if not claimed:
        return []
    try:
        room = instance.batch_size(claimed[0]) - len(claimed)
    except SoftTimeLimitExceeded:
        raise
    except Exception as error:
        if is_transient(error):
            raise
        return []  # generating the key meets the same error and records it
    if room <= 0:
        return []
    more = jobs.claim_alike(table, claimed, instance.batch_attributes, room, task_id)
    if more:
        logger.info(
            "claimed %d more queued keys of the same model and method, a batch of %d",
            len(more),
            len(claimed) + len(more),
        )
    return more


def _settle(
    table: Any,
    key: dict,
    task_id: str,
    fetched: tuple,
    outcome: tuple | Exception,
    started: float,
    result: BatchResult,
) -> None:
    """Stores a computed key or records its failure; a transient error propagates, so that the task is retried."""
    if isinstance(outcome, Exception):
        _record_failure(table, key, task_id, outcome, result)
        return
    try:
        stored = store(table, key, task_id, fetched, outcome, started)
    except SoftTimeLimitExceeded:
        raise
    except Exception as error:
        _record_failure(table, key, task_id, error, result)
        return
    (result.done if stored else result.skipped).append(key)


def _record_failure(table: Any, key: dict, task_id: str, error: Exception, result: BatchResult) -> None:
    if is_transient(error):
        raise error
    logger.warning("key %s failed: %s", key, error)
    trace = "".join(traceback.format_exception(error))
    if jobs.fail(table, key, task_id, f"{type(error).__name__}: {error}", trace):
        result.failed.append(key)
