"""Generating the MEIs of one batch of keys, each recorded in the table's jobs.

A key is computed only while this task holds its reservation, and its row is inserted in the same
transaction that removes its job, after checking that the job is still this task's: a key withdrawn
(cancelled) meanwhile writes nothing, and a key computed twice (a redelivered message) is written once.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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


def generate_key(table: Any, key: Mapping[str, Any], task_id: str) -> bool:
    """Computes and stores one key's MEI; False when its job was withdrawn before it could be stored."""
    instance = table()
    job_table = instance.jobs
    if instance & key:
        (job_table & key).delete_quick()
        return True
    if not jobs.holds(table, key, task_id):
        return False
    fetched = instance.make_fetch(dict(key))
    computed = instance.make_compute(dict(key), *fetched)
    with instance.connection.transaction:
        if not jobs.holds(table, key, task_id):
            return False
        if instance & key:
            (job_table & key).delete_quick()
            return True
        if instance.make_fetch(dict(key)) != fetched:
            raise RuntimeError(f"the inputs of {dict(key)} changed while its MEI was generated")
        with _inserts_allowed(instance):
            instance.make_insert(dict(key), *computed)
        (job_table & key).delete_quick()
    return True


def run_batch(table: Any, keys: Sequence[Mapping[str, Any]], task_id: str, progress: BatchProgress) -> BatchResult:
    """Claims the batch's keys and generates them one by one.

    A permanent error fails its key (message and traceback in the jobs table) and the batch goes on. A lost
    connection propagates so that the task is retried; the keys stay reserved under this task's id, which the
    retry reclaims. A soft time limit fails the current key and gives the rest back.
    """
    claimed = jobs.claim(table, keys, task_id)
    result = BatchResult(skipped=[dict(key) for key in keys if dict(key) not in claimed])
    for index, key in enumerate(claimed):
        progress.start_key(index, key)
        try:
            with observing(progress):
                stored = generate_key(table, key, task_id)
        except SoftTimeLimitExceeded:
            if index == 0:
                message = "SoftTimeLimitExceeded: one key ran past MEI_SERVICE_TASK_TIME_LIMIT; raise the limit"
                jobs.fail(table, key, task_id, message, traceback.format_exc())
                result.failed.append(key)
            result.released = jobs.release(table, claimed[max(index, 1) :], task_id)
            break
        except Exception as error:
            if is_transient(error):
                raise
            logger.warning("key %s failed: %s", key, error)
            if jobs.fail(table, key, task_id, f"{type(error).__name__}: {error}", traceback.format_exc()):
                result.failed.append(key)
        else:
            (result.done if stored else result.skipped).append(key)
    progress.done = len(claimed)
    return result
