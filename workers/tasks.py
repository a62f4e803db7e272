"""The task workers run: generate the MEIs of a batch of keys of one table."""

from __future__ import annotations

import logging

from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.time import get_exponential_backoff_interval

from mei import policy
from mei_service.app import TASK_NAME, app
from mei_service.failures import is_transient, reconnect_database
from mei_service.jobs import declared_jobs
from mei_service.local import endpoints
from mei_service.settings import Settings
from mei_service.tables import resolve_table
from workers.execution import run_batch
from workers.heartbeat import Heartbeat
from workers.progress import BatchProgress

logger = logging.getLogger(__name__)
settings: Settings = app.mei_settings
heartbeat: Heartbeat | None = None


@worker_process_init.connect
def start_heartbeat(**_: object) -> None:
    global heartbeat
    logger.info("worker process using %s", endpoints())
    heartbeat = Heartbeat(settings.broker_url, settings.heartbeat_interval)
    heartbeat.start()


@worker_process_shutdown.connect
def stop_heartbeat(**_: object) -> None:
    if heartbeat is not None:
        heartbeat.stop()


class KeysFailed(Exception):
    """Some keys of the task failed; each is recorded in the table's jobs with its traceback. One message
    argument, so that the result backend rebuilds it as it was raised."""

    @classmethod
    def of(cls, table: str, summary: dict[str, int]) -> KeysFailed:
        counts = ", ".join(f"{state} {count}" for state, count in summary.items())
        return cls(
            f"{summary['failed']} of {sum(summary.values())} keys failed ({counts}); "
            f"their tracebacks: mei-service errors {table}"
        )


def retry_countdown(retries: int) -> int:
    """Exponential backoff with equal jitter: a wait of 1-2, 2-4, 4-8, ... seconds (at most
    ``retry_backoff_max``). The random half keeps many workers from returning to a database together; the fixed
    half makes the retries span at least 31 s, so that a database restart cannot use them all up (full jitter
    can draw five waits of nothing)."""
    ceiling = get_exponential_backoff_interval(1, retries + 1, settings.retry_backoff_max)
    return ceiling // 2 + get_exponential_backoff_interval(1, retries, ceiling - ceiling // 2, full_jitter=True)


# A task whose worker process died is retried after default_retry_delay (task_retry_on_worker_lost).
@app.task(bind=True, name=TASK_NAME, default_retry_delay=2, max_retries=settings.max_retries)
def generate(self: Task, table: str, keys: list[dict]) -> dict[str, int]:
    """Generates the MEIs of ``keys`` (one trained model, one method) in the MEI table at dotted path ``table``."""
    progress = BatchProgress(self, total=len(keys), interval=settings.progress_interval)
    try:
        # Everything a message or the rows it points at name is checked against the allow-list.
        with policy.enforced():
            mei_table = resolve_table(table)
            if heartbeat is not None:
                heartbeat.hold(declared_jobs(mei_table).full_table_name)
            result = run_batch(mei_table, keys, self.request.id, progress)
    except Exception as error:
        if not is_transient(error):
            raise
        reconnect_database()
        countdown = retry_countdown(self.request.retries)
        logger.warning("lost a connection (%s); retrying in %s s", error, countdown)
        raise self.retry(exc=error, countdown=countdown, max_retries=settings.max_retries) from error
    if result.failed:
        # Flower and the result backend show the task as failed, with what happened to its keys.
        raise KeysFailed.of(table, result.summary())
    return result.summary()
