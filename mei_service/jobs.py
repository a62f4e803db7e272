"""The service's use of DataJoint's jobs table, the per-key record that ``MEI.jobs.progress()`` reads.

A key's row in ``MEI.jobs`` says where it stands:

- ``pending`` with ``version = 'task:<id>'``: queued on the broker, carried by task ``<id>``;
- ``pending`` with ``version = ''``: known but not queued (added by DataJoint's own ``refresh``, or given back);
- ``reserved``: claimed by a worker (``host``, ``pid``, ``version = 'task:<id>'``) that is computing it;
- ``error``: failed permanently, with message and traceback; no row, once the MEI is stored.

Every change of state is one conditional SQL statement, so concurrent schedulers and workers never both
own a key. The statements are PostgreSQL's (``ON CONFLICT``, ``RETURNING``, ``UPDATE ... FROM``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from mei_service.restrictions import restriction as checked_restriction
from mei_service.tables import json_key

MARKER = "task:"
CHUNK = 500


def marker(task_id: str) -> str:
    return MARKER + task_id


def declared_jobs(table: Any) -> Any:
    """The table's jobs table, declared if it is not yet (by whichever of several processes gets there first)."""
    jobs = table().jobs
    if not jobs.is_declared:
        try:
            jobs.declare()
        except Exception:
            if not jobs.is_declared:
                raise
    return jobs


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _quoted(columns: Iterable[str], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{column}"' for column in columns)


def _placeholders(width: int, rows: int) -> str:
    return ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * rows)


def _key_condition(columns: Sequence[str], keys: Sequence[Mapping[str, Any]]) -> tuple[str, list]:
    # IN (VALUES ...) is planned as a join; a plain IN list of row values nests one OR per key.
    condition = f"({_quoted(columns)}) IN (VALUES {_placeholders(len(columns), len(keys))})"
    return condition, [key[column] for key in keys for column in columns]


def _rows(jobs: Any, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    columns = jobs.primary_key
    return [json_key(dict(zip(columns, row, strict=True))) for row in jobs.connection.query(sql, args=args).fetchall()]


def mark_queued(table: Any, batches: Mapping[str, Sequence[Mapping[str, Any]]], priority: int) -> dict[str, list[dict]]:
    """Records each batch's keys as queued under its task id; returns the keys this call got, by task id.

    A key already queued, running, failed or done elsewhere is left alone: of two schedulers enqueuing the
    same keys at once, each key goes to exactly one of them.
    """
    jobs = declared_jobs(table)
    columns = jobs.primary_key
    rows = [(task_id, json_key(key)) for task_id, keys in batches.items() for key in keys]
    owned: list[dict] = []
    for chunk in _chunks(rows):
        values = _placeholders(len(columns) + 3, len(chunk))
        args = [
            value
            for task_id, key in chunk
            for value in (*(key[c] for c in columns), "pending", priority, marker(task_id))
        ]
        owned += _rows(
            jobs,
            f"INSERT INTO {jobs.full_table_name} ({_quoted(columns)}, status, priority, version) VALUES {values} "
            f"ON CONFLICT DO NOTHING RETURNING {_quoted(columns)}",
            args,
        )
        values = _placeholders(len(columns) + 1, len(chunk))
        args = [value for task_id, key in chunk for value in (*(key[c] for c in columns), marker(task_id))]
        matches = " AND ".join(f'j."{c}" = v."{c}"' for c in columns)
        owned += _rows(
            jobs,
            f"UPDATE {jobs.full_table_name} AS j SET version = v.version, priority = %s, "
            "scheduled_time = CURRENT_TIMESTAMP(3) "
            f"FROM (VALUES {values}) AS v({_quoted(columns)}, version) "
            f"WHERE {matches} AND j.status = 'pending' AND j.version = '' "
            f"RETURNING {_quoted(columns, alias='j')}",
            [priority, *args],
        )
    owned_keys = {tuple(key[c] for c in columns) for key in owned}
    kept: dict[str, list[dict]] = {}
    for task_id, key in rows:
        if tuple(key[c] for c in columns) in owned_keys:
            kept.setdefault(task_id, []).append(key)
    return kept


def claim(table: Any, keys: Sequence[Mapping[str, Any]], task_id: str) -> list[dict]:
    """Reserves for this process the keys that are queued, or already reserved by this same task (a retry or a
    redelivery after its worker died); returns them. Keys withdrawn, failed or taken by another task are not."""
    jobs = declared_jobs(table)
    condition, args = _key_condition(jobs.primary_key, [json_key(key) for key in keys])
    connection = jobs.connection
    return _rows(
        jobs,
        f"UPDATE {jobs.full_table_name} SET status = 'reserved', reserved_time = CURRENT_TIMESTAMP(3), "
        f'host = %s, pid = %s, connection_id = %s, "user" = %s, version = %s '
        f"WHERE {condition} AND (status = 'pending' OR (status = 'reserved' AND version = %s)) "
        f"RETURNING {_quoted(jobs.primary_key)}",
        [
            platform.node(),
            os.getpid(),
            connection.connection_id,
            connection.get_user(),
            marker(task_id),
            *args,
            marker(task_id),
        ],
    )


def holds(table: Any, key: Mapping[str, Any], task_id: str) -> bool:
    """Whether this task still holds ``key``; inside a transaction, the job row stays locked until it ends."""
    jobs = declared_jobs(table)
    condition, args = _key_condition(jobs.primary_key, [json_key(key)])
    rows = jobs.connection.query(
        f"SELECT 1 FROM {jobs.full_table_name} WHERE {condition} AND status = 'reserved' AND version = %s FOR UPDATE",
        args=[*args, marker(task_id)],
    ).fetchall()
    return bool(rows)


def unqueue(table: Any, task_ids: Iterable[str]) -> None:
    """Marks the keys of tasks that never reached the broker as not queued."""
    jobs = declared_jobs(table)
    for task_id in task_ids:
        jobs.connection.query(
            f"UPDATE {jobs.full_table_name} SET version = '' WHERE status = 'pending' AND version = %s",
            args=[marker(task_id)],
        )


def fail(table: Any, key: Mapping[str, Any], task_id: str, message: str, stack: str) -> bool:
    """Records a key's failure, if this task still holds it (it may have been withdrawn or given back)."""
    if not holds(table, key, task_id):
        return False
    declared_jobs(table).error(dict(key), error_message=message, error_stack=stack)
    return True


def release(table: Any, keys: Sequence[Mapping[str, Any]], task_id: str) -> list[dict]:
    """Gives keys this task reserved back as known-but-not-queued, for the scheduler to queue again."""
    if not keys:
        return []
    jobs = declared_jobs(table)
    condition, args = _key_condition(jobs.primary_key, [json_key(key) for key in keys])
    return _rows(
        jobs,
        f"UPDATE {jobs.full_table_name} SET status = 'pending', version = '' "
        f"WHERE {condition} AND status = 'reserved' AND version = %s RETURNING {_quoted(jobs.primary_key)}",
        [*args, marker(task_id)],
    )


def repend_orphans(table: Any, live_workers: set[str], grace_seconds: float) -> list[dict]:
    """Gives back the keys reserved by service workers that stopped beating (a dead GPU node); returns them."""
    jobs = declared_jobs(table)
    reserved = jobs.connection.query(
        f"SELECT host, pid FROM {jobs.full_table_name} WHERE status = 'reserved' AND version LIKE %s "
        f"AND reserved_time < CURRENT_TIMESTAMP(3) - make_interval(secs => %s) GROUP BY host, pid",
        args=(MARKER + "%", grace_seconds),
    ).fetchall()
    dead = [(host, pid) for host, pid in reserved if f"{host}:{pid}" not in live_workers]
    orphans: list[dict] = []
    for host, pid in dead:
        orphans += _rows(
            jobs,
            f"UPDATE {jobs.full_table_name} SET status = 'pending', version = '' WHERE status = 'reserved' "
            f"AND version LIKE %s AND host = %s AND pid = %s RETURNING {_quoted(jobs.primary_key)}",
            [MARKER + "%", host, pid],
        )
    return orphans


def tasks_in_flight(table: Any) -> set[str]:
    """Ids of the tasks that carry queued or running keys."""
    jobs = declared_jobs(table)
    rows = jobs.connection.query(
        f"SELECT DISTINCT version FROM {jobs.full_table_name} WHERE status IN ('pending', 'reserved') "
        "AND version LIKE %s",
        args=(MARKER + "%",),
    ).fetchall()
    return {version.removeprefix(MARKER) for (version,) in rows}


def settle_task(table: Any, task_id: str, error: tuple[str, str] | None) -> list[dict]:
    """The keys a finished task left queued or reserved: failed with the task's ``(message, traceback)`` if it
    failed, else given back for the scheduler to queue again. Returns them."""
    jobs = declared_jobs(table)
    if error is None:
        return _rows(
            jobs,
            f"UPDATE {jobs.full_table_name} SET status = 'pending', version = '' "
            f"WHERE status IN ('pending', 'reserved') AND version = %s RETURNING {_quoted(jobs.primary_key)}",
            [marker(task_id)],
        )
    keys = _rows(
        jobs,
        f"SELECT {_quoted(jobs.primary_key)} FROM {jobs.full_table_name} "
        "WHERE status IN ('pending', 'reserved') AND version = %s",
        [marker(task_id)],
    )
    for key in keys:
        jobs.error(key, error_message=error[0], error_stack=error[1])
    return keys


def withdraw(table: Any, restriction: Any = None) -> set[str]:
    """Cancels the queued and running service jobs matching ``restriction``: they become ``ignore`` with the
    message ``cancelled`` (so that neither the scheduler nor ``populate`` takes them up; ``retry`` does).
    Returns the ids of the tasks that carried them."""
    _, selected = restricted(table, restriction)
    jobs = declared_jobs(table)
    selected = selected.proj()
    columns = jobs.primary_key
    matches = " AND ".join(f'j."{column}" = old."{column}"' for column in columns)
    rows = jobs.connection.query(
        f"WITH old AS (SELECT {_quoted(columns)}, version FROM {jobs.full_table_name} "
        f"WHERE status IN ('pending', 'reserved') AND version LIKE %s "
        f"AND ({_quoted(columns)}) IN ({selected.make_sql()}) FOR UPDATE) "
        f"UPDATE {jobs.full_table_name} AS j SET status = 'ignore', error_message = 'cancelled', version = '' "
        f"FROM old WHERE {matches} RETURNING old.version",
        args=[MARKER + "%"],
    ).fetchall()
    return {version.removeprefix(MARKER) for (version,) in rows}


# Where a key stands, as a condition on its job row.
STATE_CONDITIONS = {
    "queued": f"status = 'pending' AND version LIKE '{MARKER}%%'",
    "unqueued": f"status = 'pending' AND version NOT LIKE '{MARKER}%%'",
    "running": "status = 'reserved'",
    "failed": "status = 'error'",
    "cancelled": "status = 'ignore'",
}


def count_states(table: Any, keys: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many of ``keys`` are done (have a row), queued, running, failed, ..."""
    jobs = declared_jobs(table)
    counts = dict.fromkeys(("done", *STATE_CONDITIONS), 0)
    states = " ".join(f"WHEN {sql} THEN '{state}'" for state, sql in STATE_CONDITIONS.items())
    for chunk in _chunks([json_key(key) for key in keys]):
        condition, args = _key_condition(jobs.primary_key, chunk)
        counts["done"] += table.connection.query(
            f"SELECT count(*) FROM {table.full_table_name} WHERE {condition}", args=args
        ).fetchone()[0]
        for state, number in jobs.connection.query(
            f"SELECT CASE {states} END, count(*) FROM {jobs.full_table_name} WHERE {condition} GROUP BY 1", args=args
        ).fetchall():
            counts[state] += number
    return counts


def failures(table: Any, keys: Sequence[Mapping[str, Any]]) -> list[tuple[dict, str, str]]:
    """``(key, message, traceback)`` of those of ``keys`` that failed."""
    jobs = declared_jobs(table)
    found = []
    for chunk in _chunks([json_key(key) for key in keys]):
        condition, args = _key_condition(jobs.primary_key, chunk)
        query = f"SELECT {_quoted(jobs.primary_key)} FROM {jobs.full_table_name} WHERE {condition} AND status = 'error'"
        for key in _rows(jobs, query, args):
            found.append((key, *(jobs & key).fetch1("error_message", "error_stack")))
    return found


def restricted(table: Any, restriction: Any = None) -> tuple[Any, Any]:
    """The key source and the jobs of ``table`` restricted like ``table & restriction``; keys given as mappings
    are checked and bound as parameters (``mei_service.restrictions``)."""
    source = table().key_source
    if restriction is not None:
        source = source & checked_restriction(table, restriction)
    return source, declared_jobs(table).restrict(source.proj(), semantic_check=False)
