"""Health checks for container orchestrators: each returns a problem to report, or ``None`` when healthy.

``mei-service health`` runs the checks a service asks for and exits 1 with the problems on standard error,
so that a ``HEALTHCHECK`` or a compose ``healthcheck`` can call it.
"""

from __future__ import annotations

import platform
import urllib.request

import redis

from mei_service.heartbeats import live_workers
from mei_service.settings import Settings

TIMEOUT = 5.0


def broker_problem(settings: Settings) -> str | None:
    try:
        redis.Redis.from_url(settings.broker_url, socket_timeout=TIMEOUT).ping()
    except redis.RedisError as error:
        return f"the broker does not answer: {error}"
    return None


def database_problem() -> str | None:
    import datajoint as dj

    try:
        dj.conn().query("SELECT 1").fetchall()
    except Exception as error:
        return f"the database does not answer: {error}"
    return None


def worker_problem(settings: Settings, host: str | None = None) -> str | None:
    """A problem unless a worker process of this host has sent a heartbeat within the heartbeat TTL."""
    host = host or platform.node()
    try:
        live = live_workers(redis.Redis.from_url(settings.broker_url, socket_timeout=TIMEOUT), settings.heartbeat_ttl)
    except redis.RedisError as error:
        return f"cannot read worker heartbeats: {error}"
    if not any(name.rsplit(":", 1)[0] == host for name in live):
        return f"no worker process on {host} sent a heartbeat in the last {settings.heartbeat_ttl} s"
    return None


def url_problem(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            if response.status != 200:
                return f"{url} answered {response.status}"
    except OSError as error:
        return f"{url} does not answer: {error}"
    return None
