"""A worker process's heartbeat: a thread that, every few seconds, renews the leases of the keys the process
holds (in the database, where they outlive a broker that was emptied) and records ``host:pid`` in Redis for
health checks."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
from typing import Any

import datajoint as dj
import redis

from mei_service import jobs
from mei_service.heartbeats import beat, forget

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, broker_url: str, interval: float) -> None:
        super().__init__(name="mei-heartbeat", daemon=True)
        self.client = redis.Redis.from_url(broker_url, socket_timeout=interval)
        self.interval = interval
        self.stopped = threading.Event()
        self.jobs_tables: set[str] = set()
        self.database: Any = None

    def hold(self, jobs_table: str) -> None:
        """Renews, from now on, the leases of the keys this process reserves in ``jobs_table`` (its full name)."""
        self.jobs_tables.add(jobs_table)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.renew_leases()
            try:
                beat(self.client)
            except redis.RedisError as error:
                logger.warning("heartbeat not recorded: %s", error)
            self.stopped.wait(self.interval)

    def renew_leases(self) -> None:
        if not self.jobs_tables:
            return
        try:
            # A connection of its own: the task's connection is busy in the main thread.
            self.database = self.database or dj.Connection(
                dj.config["database.host"],
                dj.config["database.user"],
                dj.config["database.password"],
                use_tls=dj.config["database.use_tls"],
            )
            for name in sorted(self.jobs_tables):
                jobs.renew_leases(self.database, name, platform.node(), os.getpid())
        except Exception as error:
            logger.warning("leases not renewed: %s", error)
            self.database = None

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):
            forget(self.client)
