"""What the broker holds: the ids of the tasks whose messages wait in a queue, read straight from Redis.

Kombu's Redis transport keeps each queue (and each priority level of it) as a list of JSON messages, and
moves a message to its ``unacked`` hash when it delivers it to a worker. Only a message still in a list is
certain to reach a worker; one in ``unacked`` is held by a worker that may since have died.
"""

from __future__ import annotations

import json

import redis

SCAN_BATCH = 500


def waiting_task_ids(client: redis.Redis) -> set[str]:
    """Ids of the tasks whose messages are in a queue of this Redis database, not yet delivered."""
    waiting: set[str] = set()
    for name in client.scan_iter(count=SCAN_BATCH, _type="list"):
        for raw in client.lrange(name, 0, -1):
            task_id = _task_id(raw)
            if task_id:
                waiting.add(task_id)
    return waiting


def _task_id(raw: bytes) -> str | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    headers = message.get("headers") if isinstance(message, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None
