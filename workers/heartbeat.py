"""A worker process's heartbeat: a thread that records ``host:pid`` in Redis every few seconds."""

from __future__ import annotations

import contextlib
import logging
import threading

import redis

from mei_service.heartbeats import beat, forget

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, broker_url: str, interval: float) -> None:
        super().__init__(name="mei-heartbeat", daemon=True)
        self.client = redis.Redis.from_url(broker_url, socket_timeout=interval)
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                beat(self.client)
            except redis.RedisError as error:
                logger.warning("heartbeat not recorded: %s", error)
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):
            forget(self.client)
