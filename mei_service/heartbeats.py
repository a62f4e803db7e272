"""Worker liveness for health checks: each worker process records a heartbeat in Redis.

A worker is named ``host:pid``, as DataJoint's jobs table records who reserved a key. Which keys a live
worker holds is not judged from these (they vanish with the broker) but from the leases in the jobs table
(``mei_service.jobs.renew_leases``).
"""

from __future__ import annotations

import os
import platform

import redis

HEARTBEATS = "mei-service:heartbeats"


def worker_name(host: str | None = None, pid: int | None = None) -> str:
    return f"{host or platform.node()}:{pid or os.getpid()}"


def _now(client: redis.Redis) -> float:
    """Redis's clock, the one clock that every host shares."""
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def beat(client: redis.Redis, name: str | None = None) -> None:
    client.hset(HEARTBEATS, name or worker_name(), _now(client))


def forget(client: redis.Redis, name: str | None = None) -> None:
    client.hdel(HEARTBEATS, name or worker_name())


def live_workers(client: redis.Redis, ttl: float) -> set[str]:
    """Workers whose last heartbeat is younger than ``ttl`` seconds; long-dead entries are dropped."""
    now = _now(client)
    live, forgotten = set(), []
    for name, stamp in client.hgetall(HEARTBEATS).items():
        age = now - float(stamp)
        if age < ttl:
            live.add(name.decode())
        elif age > 100 * ttl:
            forgotten.append(name)
    if forgotten:
        client.hdel(HEARTBEATS, *forgotten)
    return live
