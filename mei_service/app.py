"""The Celery app: ``celery -A mei_service.app ...``.

Configured from ``Settings`` (``MEI_SERVICE_*``), JSON only, with the reliability settings that make Redis
deliver each message until a worker has finished it. The task itself lives in ``workers.tasks``, which only
worker processes import.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from mei_service.settings import Settings

TASK_NAME = "mei_service.generate"


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("mei_service", broker=settings.broker_url, backend=settings.result_backend, include=["workers.tasks"])
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
        "sep": ":",
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_retry_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool_start_method="spawn",
        worker_proc_alive_timeout=120,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=settings.soft_shutdown_timeout,
        # An idle worker stops at once. A message it held back for a retry's countdown stays unacknowledged,
        # Redis gives it back, and the scheduler requeues any key whose message was lost (mei_service.jobs).
        worker_enable_soft_shutdown_on_idle=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        visibility_timeout=settings.visibility_timeout,
        task_time_limit=settings.hard_time_limit,
        task_soft_time_limit=settings.soft_time_limit,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_default_queue=settings.default_queue,
        task_queues=[Queue(settings.default_queue)],
        task_create_missing_queues=True,
        task_default_priority=settings.default_priority,
        result_expires=settings.result_expires,
        result_extended=True,
    )
    # Kept beside the configuration, not in it: `celery inspect conf` and Flower show everything in app.conf.
    app.mei_settings = settings
    return app


app = create_app()
