"""Finding the MEIs that are missing and putting them on the broker, once or as a daemon.

``enqueue`` takes the keys of ``key_source & restriction`` that have no row and no job (neither queued,
running nor failed), groups them into batches of one trained model and one method (a worker loads the model
once per batch), records each batch's keys as queued (``mei_service.jobs``) and sends one task per batch.
The daemon repeats this every few seconds and gives back the keys of workers that died.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery

from mei_service import jobs
from mei_service.app import TASK_NAME
from mei_service.broker import waiting_task_ids
from mei_service.failures import is_transient, reconnect_database
from mei_service.settings import Settings
from mei_service.tables import resolve_table, table_path

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    task_id: str
    keys: list[dict]
    queue: str


@dataclass
class Enqueued:
    """What one call of ``enqueue`` put on the broker."""

    table: Any
    restriction: Any
    batches: list[Batch] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def keys(self) -> list[dict]:
        return [key for batch in self.batches for key in batch.keys]

    def __str__(self) -> str:
        queues = Counter(batch.queue for batch in self.batches for _ in batch.keys)
        where = ", ".join(f"{number} to {name}" for name, number in sorted(queues.items()))
        return f"queued {len(self.keys)} keys in {len(self.batches)} tasks" + (f" ({where})" if where else "")


def group_into_batches(table: Any, keys: Sequence[dict], batch_size: int) -> dict[str, list[dict]]:
    """Batches of at most ``batch_size`` keys, each of one trained model and one method."""
    instance = table()
    shared = [*instance.trained_model_table().primary_key, *instance.method_table().primary_key]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for key in keys:
        groups[tuple(key[name] for name in shared)].append(key)
    return {
        str(uuid.uuid4()): group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    }


def enqueue(
    app: Celery,
    table: Any,
    restriction: Any = None,
    *,
    priority: int | None = None,
    batch_size: int | None = None,
    queue: str | None = None,
) -> Enqueued:
    """Queues the missing keys of ``table & restriction``; returns the batches sent."""
    settings: Settings = app.mei_settings
    path = table_path(table)
    resolve_table(path)
    priority = settings.default_priority if priority is None else priority
    if not 0 <= priority <= 9:
        raise ValueError(f"priority must be 0 (most urgent) to 9, got {priority}")
    start = time.perf_counter()
    batch_size = settings.batch_size if batch_size is None else settings.check_batch_size(batch_size)
    batches = group_into_batches(table, jobs.missing_keys(table, restriction), batch_size)
    owned = jobs.mark_queued(table, batches, priority)
    unsent = set(owned)
    devices: dict[tuple, str] = {}
    sent = []
    try:
        with app.producer_or_acquire() as producer:
            for task_id, keys in owned.items():
                batch = Batch(task_id, keys, queue or queue_for(table, keys[0], settings, devices))
                app.send_task(
                    TASK_NAME,
                    args=[path, keys],
                    task_id=task_id,
                    priority=priority,
                    queue=batch.queue,
                    producer=producer,
                )
                unsent.discard(task_id)
                sent.append(batch)
    finally:
        jobs.unqueue(table, unsent)
    result = Enqueued(table, restriction, sent)
    result.seconds = time.perf_counter() - start
    return result


def queue_for(table: Any, key: dict, settings: Settings, devices: dict[tuple, str]) -> str:
    """The queue of a batch: the GPU workers' when its method generates on CUDA (a CPU worker would only fail
    its keys), else the default one. ``devices`` remembers each method's device for one enqueue."""
    methods = table().method_table()
    method = tuple(key[name] for name in methods.primary_key)
    if method not in devices:
        config = (methods & dict(zip(methods.primary_key, method, strict=True))).fetch1("method_config")
        devices[method] = str(config.get("device", "cpu")) if isinstance(config, dict) else "cpu"
    return settings.gpu_queue if devices[method].startswith("cuda") else settings.default_queue


FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def recover(app: Celery, table: Any) -> list[dict]:
    """Brings the jobs table and the broker back in line: every key queued or running is either held by a live
    worker, or waiting on the broker, or is given back here for the next enqueue to send again.

    - Running keys whose worker stopped renewing their lease (``MEI_SERVICE_HEARTBEAT_TTL``) are given back:
      the lease is in the database, so it survives a broker that was emptied.
    - Queued keys whose message is not waiting in a queue of the broker and that no worker claimed within
      ``MEI_SERVICE_CLAIM_TIMEOUT`` are given back: the message was lost (a broker restarted empty or flushed,
      an enqueuing process killed between recording and sending) or delivered to a worker that died.
    - Keys left by a task that finished are failed with the task's error if it failed permanently, else given
      back (it ran out of retries on lost connections, or was revoked).

    Nothing waits for the broker's visibility timeout. A late copy of a message finds its keys claimed by
    another task, or done, and writes nothing.
    """
    settings: Settings = app.mei_settings
    path = table_path(table)
    settled = jobs.expire_leases(table, settings.heartbeat_ttl)
    if settled:
        logger.warning("gave back %d keys of %s whose workers stopped renewing their lease", len(settled), path)
    waiting = waiting_task_ids(redis.Redis.from_url(settings.broker_url))
    lost = jobs.requeue_lost(table, waiting, settings.claim_timeout)
    if lost:
        logger.warning("gave back %d keys of %s whose messages are no longer on the broker", len(lost), path)
    settled += lost
    for task_id in jobs.tasks_in_flight(table):
        result = app.AsyncResult(task_id)
        if result.state not in FINISHED:
            continue
        failed = result.state == "FAILURE" and not is_transient(result.result)
        error = (f"task failed: {result.result!r}", result.traceback or "") if failed else None
        keys = jobs.settle_task(table, task_id, error)
        if keys:
            logger.warning("task %s ended %s leaving %d keys; settled them", task_id, result.state, len(keys))
        settled += keys
    return settled


def run_daemon(
    app: Celery,
    tables: Sequence[Any],
    restriction: Any = None,
    *,
    interval: float = 10.0,
    stop: threading.Event | None = None,
    **options: Any,
) -> None:
    """Keeps the tables topped up: every ``interval`` seconds, recover orphaned keys and enqueue missing ones."""
    stop = stop or threading.Event()
    while not stop.is_set():
        for table in tables:
            try:
                recover(app, table)
                sent = enqueue(app, table, restriction, **options)
                if sent.batches:
                    logger.info(
                        "queued %d keys of %s in %d tasks", len(sent.keys), table_path(table), len(sent.batches)
                    )
            except Exception as error:
                logger.exception("scheduling %s failed; trying again in %s s", table_path(table), interval)
                if is_transient(error):
                    reconnect_database()
        stop.wait(interval)
