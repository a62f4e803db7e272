"""The state of each key of an MEI table, kept in DataJoint's jobs table (``MEI.jobs``), and its transitions.

The jobs table is the record of what must happen; the broker only carries messages, and may lose, repeat or
delay them. ``KeyState`` names where a key stands and ``JOB_CONDITIONS`` says which job rows are in each
state; every other module asks for states by name. Each transition is one function here, and one
conditional SQL statement, so that concurrent schedulers and workers never both own a key:

=============  ========================================  ===================================================
from           to                                        function
=============  ========================================  ===================================================
missing,       queued (``task:<id>``)                    ``mark_queued`` (``enqueue``, the scheduler)
unqueued
queued         unqueued                                  ``unqueue`` (never sent), ``requeue_lost`` (the
                                                         message is no longer on the broker)
queued         running (``host``, ``pid``, a lease)      ``claim`` (the worker of the task), ``claim_alike``
                                                         (a worker filling its batch with keys of other tasks)
running        running, lease renewed                    ``renew_leases`` (the worker's heartbeat)
running        done (no job row, or ``success``)         ``complete`` (inside the insert's transaction)
running        failed (message, traceback)               ``fail``
running        unqueued                                  ``release`` (time limit), ``expire_leases`` (its
                                                         worker stopped renewing)
queued,        failed or unqueued                        ``settle_task`` (the task ended, keys left)
running
queued,        cancelled                                 ``withdraw``
running
failed,        missing                                   ``forget``
cancelled
=============  ========================================  ===================================================

The statements are PostgreSQL's (``ON CONFLICT``, ``RETURNING``, ``UPDATE ... FROM``, ``SKIP LOCKED``).
"""

from __future__ import annotations

import enum
import logging
import os
import platform
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from datajoint import Not as dj_not

from mei_service.restrictions import restriction as checked_restriction
from mei_service.tables import json_key

MARKER = "task:"
CHUNK = 500
CANCELLED_MESSAGE = "cancelled"


class KeyState(enum.StrEnum):
    """Where a key of an MEI table stands."""

    DONE = "done"  # its MEI row exists
    MISSING = "missing"  # no row and no job (or a kept success record whose row was deleted)
    UNQUEUED = "unqueued"  # known but on no broker: the next enqueue sends it
    QUEUED = "queued"  # a task carrying it was sent
    RUNNING = "running"  # a worker holds it and renews its lease
    FAILED = "failed"  # failed permanently; message and traceback in the job row
    CANCELLED = "cancelled"  # withdrawn by cancel; retry queues it again
    IGNORED = "ignored"  # set to DataJoint's ignore by a user: left alone
    COMPLETED = "completed"  # DataJoint's success record (jobs.keep_completed): done while the row exists


# The job rows of each state (version 'task:<id>' names the task that carries a key); the doubled % is a
# literal % in the queries' parameter syntax.
JOB_CONDITIONS = {
    KeyState.UNQUEUED: f"status = 'pending' AND version NOT LIKE '{MARKER}%%'",
    KeyState.QUEUED: f"status = 'pending' AND version LIKE '{MARKER}%%'",
    KeyState.RUNNING: "status = 'reserved'",
    KeyState.FAILED: "status = 'error'",
    KeyState.CANCELLED: f"status = 'ignore' AND error_message = '{CANCELLED_MESSAGE}'",
    KeyState.IGNORED: f"status = 'ignore' AND error_message != '{CANCELLED_MESSAGE}'",
    KeyState.COMPLETED: "status = 'success'",
}
# States in which a key without a row is not sent again by enqueue.
HANDLED = (KeyState.QUEUED, KeyState.RUNNING, KeyState.FAILED, KeyState.CANCELLED, KeyState.IGNORED)
# The states counted by status(); a completed key counts as done through its row.
COUNTED = (*HANDLED, KeyState.UNQUEUED)


def condition(*states: KeyState) -> str:
    """The SQL condition on job rows of any of ``states``."""
    return " OR ".join(f"({JOB_CONDITIONS[state]})" for state in states)


def marker(task_id: str) -> str:
    return MARKER + task_id


class _InheritedTypeNotice(logging.Filter):
    """DataJoint 2.3 declares a jobs table with PostgreSQL's name for each key attribute's type (``integer`` for
    ``int32``), then warns that the definition uses a native type: nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Native type")


def declared_jobs(table: Any) -> Any:
    """The table's jobs table, declared if it is not yet (by whichever of several processes gets there first)."""
    notice = _InheritedTypeNotice()
    logging.getLogger("datajoint").addFilter(notice)
    try:
        jobs = table().jobs  # DataJoint declares it on first access
        if not jobs.is_declared:
            try:
                jobs.declare()
            except Exception:
                if not jobs.is_declared:
                    raise
    finally:
        logging.getLogger("datajoint").removeFilter(notice)
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
    """missing or unqueued -> queued: records each batch's keys under its task id; returns the keys this call
    got, by task id.

    A key already queued, running, failed or done elsewhere is left alone: of two schedulers enqueuing the
    same keys at once, each key goes to exactly one of them. The caller passes only keys without a row, so a
    kept success record among them is one whose row was deleted: queued again, as DataJoint's refresh would.
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
            f"UPDATE {jobs.full_table_name} AS j SET status = 'pending', version = v.task, priority = %s, "
            "scheduled_time = CURRENT_TIMESTAMP(3) "
            f"FROM (VALUES {values}) AS v({_quoted(columns)}, task) "
            f"WHERE {matches} AND ({condition(KeyState.UNQUEUED, KeyState.COMPLETED)}) "
            f"RETURNING {_quoted(columns, alias='j')}",
            [priority, *args],
        )
    owned_keys = {tuple(key[c] for c in columns) for key in owned}
    kept: dict[str, list[dict]] = {}
    for task_id, key in rows:
        if tuple(key[c] for c in columns) in owned_keys:
            kept.setdefault(task_id, []).append(key)
    return kept


def unqueue(table: Any, task_ids: Iterable[str]) -> None:
    """queued -> unqueued: the keys of tasks that never reached the broker."""
    jobs = declared_jobs(table)
    for task_id in task_ids:
        jobs.connection.query(
            f"UPDATE {jobs.full_table_name} SET version = '' WHERE ({condition(KeyState.QUEUED)}) AND version = %s",
            args=[marker(task_id)],
        )


def requeue_lost(table: Any, waiting: set[str], claim_timeout: float) -> list[dict]:
    """queued -> unqueued: keys queued more than ``claim_timeout`` seconds ago whose task is not among the
    ``waiting`` ones (its message still in a queue of the broker) and that no worker has claimed. The message
    was lost (a broker emptied, an enqueuing process killed before it sent) or delivered to a worker that
    died; a late copy of it finds the keys claimed by another task and writes nothing."""
    jobs = declared_jobs(table)
    return _rows(
        jobs,
        f"UPDATE {jobs.full_table_name} SET version = '' WHERE ({condition(KeyState.QUEUED)}) "
        "AND scheduled_time < CURRENT_TIMESTAMP(3) - make_interval(secs => %s) AND version <> ALL(%s::text[]) "
        f"RETURNING {_quoted(jobs.primary_key)}",
        [claim_timeout, [marker(task_id) for task_id in waiting]],
    )


def claim(table: Any, keys: Sequence[Mapping[str, Any]], task_id: str) -> list[dict]:
    """queued -> running: reserves for this process the keys that are queued (under any task: a late copy of
    a message can take keys that were queued again), or already reserved by this same task (a retry, or a
    redelivery after its worker died); returns them. Keys withdrawn, failed or taken by another task are not."""
    jobs = declared_jobs(table)
    key_condition, args = _key_condition(jobs.primary_key, [json_key(key) for key in keys])
    connection = jobs.connection
    return _rows(
        jobs,
        f"UPDATE {jobs.full_table_name} SET status = 'reserved', reserved_time = CURRENT_TIMESTAMP(3), "
        f'host = %s, pid = %s, connection_id = %s, "user" = %s, version = %s '
        f"WHERE {key_condition} AND (status = 'pending' OR ({condition(KeyState.RUNNING)} AND version = %s)) "
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


def claim_alike(
    table: Any, held: Sequence[Mapping[str, Any]], shared: Sequence[str], limit: int, task_id: str
) -> list[dict]:
    """queued -> running: reserves for this task up to ``limit`` keys besides the ``held`` ones that share the
    first held key's values of the ``shared`` attributes (one trained model and method: keys one batch can
    take), queued (oldest first) or reserved so before (a retry); returns them. The messages that carry them
    find them taken when they arrive and write nothing."""
    jobs = declared_jobs(table)
    connection = jobs.connection
    matches = " AND ".join(f'"{name}" = %s' for name in shared)
    held_condition, held_args = _key_condition(jobs.primary_key, [json_key(key) for key in held])
    # Materialized, so that the rows are picked once; its own earlier keys first (a retry), then the oldest.
    return _rows(
        jobs,
        f"WITH picked AS MATERIALIZED (SELECT ctid FROM {jobs.full_table_name} "
        f"WHERE (({condition(KeyState.QUEUED)}) OR ({condition(KeyState.RUNNING)} AND version = %s)) "
        f"AND {matches} AND NOT {held_condition} "
        "ORDER BY (version = %s) DESC, priority, scheduled_time LIMIT %s FOR UPDATE SKIP LOCKED) "
        f"UPDATE {jobs.full_table_name} SET status = 'reserved', reserved_time = CURRENT_TIMESTAMP(3), "
        f'host = %s, pid = %s, connection_id = %s, "user" = %s, version = %s '
        f"WHERE ctid IN (SELECT ctid FROM picked) RETURNING {_quoted(jobs.primary_key)}",
        [
            marker(task_id),
            *(json_key(held[0])[name] for name in shared),
            *held_args,
            marker(task_id),
            limit,
            platform.node(),
            os.getpid(),
            connection.connection_id,
            connection.get_user(),
            marker(task_id),
        ],
    )


def renew_leases(connection: Any, jobs_table: str, host: str, pid: int) -> int:
    """running -> running: renews the lease (``reserved_time``) of every key that ``host:pid`` holds in the jobs
    table named ``jobs_table``; returns how many. Rows locked by a transaction are skipped, not waited for:
    they are renewed next time."""
    running = condition(KeyState.RUNNING)
    return connection.query(
        f"UPDATE {jobs_table} SET reserved_time = CURRENT_TIMESTAMP(3) WHERE ctid IN (SELECT ctid FROM {jobs_table} "
        f"WHERE ({running}) AND host = %s AND pid = %s FOR UPDATE SKIP LOCKED)",
        args=[host, pid],
    ).rowcount


def holds(table: Any, key: Mapping[str, Any], task_id: str) -> bool:
    """Whether this task still holds ``key``; inside a transaction, the job row stays locked until it ends."""
    jobs = declared_jobs(table)
    key_condition, args = _key_condition(jobs.primary_key, [json_key(key)])
    rows = jobs.connection.query(
        f"SELECT 1 FROM {jobs.full_table_name} WHERE {key_condition} AND ({condition(KeyState.RUNNING)}) "
        "AND version = %s FOR UPDATE",
        args=[*args, marker(task_id)],
    ).fetchall()
    return bool(rows)


def complete(table: Any, key: Mapping[str, Any], started: float | None = None) -> None:
    """running -> done: as ``populate`` does, the job is deleted, or kept as a success record when DataJoint's
    ``jobs.keep_completed`` is set. Called inside the transaction that inserts the row.

    ``started`` (``time.monotonic()``) is when the key's generation began: the row's hidden job metadata
    (DataJoint's ``jobs.add_job_metadata``) then records its start and duration, which ``finished_recently``
    counts. Both read the database's clock, so that workers and readers need not share a time zone."""
    duration = None if started is None else time.monotonic() - started
    instance = table()
    if duration is not None and instance._has_job_metadata_attrs():
        key_condition, args = _key_condition(instance.primary_key, [json_key(key)])
        instance.connection.query(
            f"UPDATE {instance.full_table_name} SET _job_start_time = LOCALTIMESTAMP(3) - make_interval(secs => %s), "
            f"_job_duration = %s WHERE {key_condition}",
            args=[duration, duration, *args],
        )
    declared_jobs(table).complete(dict(key), duration=duration)


def fail(table: Any, key: Mapping[str, Any], task_id: str, message: str, stack: str) -> bool:
    """running -> failed: records a key's failure, if this task still holds it (it may have been withdrawn or
    given back)."""
    if not holds(table, key, task_id):
        return False
    declared_jobs(table).error(dict(key), error_message=message, error_stack=stack)
    return True


def release(table: Any, keys: Sequence[Mapping[str, Any]], task_id: str) -> list[dict]:
    """running -> unqueued: gives keys this task reserved back, for the scheduler to queue again."""
    if not keys:
        return []
    jobs = declared_jobs(table)
    key_condition, args = _key_condition(jobs.primary_key, [json_key(key) for key in keys])
    return _rows(
        jobs,
        f"UPDATE {jobs.full_table_name} SET status = 'pending', version = '' "
        f"WHERE {key_condition} AND ({condition(KeyState.RUNNING)}) AND version = %s "
        f"RETURNING {_quoted(jobs.primary_key)}",
        [*args, marker(task_id)],
    )


def expire_leases(table: Any, lease_seconds: float) -> list[dict]:
    """running -> unqueued: gives back the keys whose service worker has not renewed their lease for
    ``lease_seconds`` (a dead process or node: the lease is kept in the database, so it outlives a broker
    that was emptied). Keys reserved by DataJoint's own ``populate`` are not the service's to judge."""
    jobs = declared_jobs(table)
    return _rows(
        jobs,
        f"UPDATE {jobs.full_table_name} SET status = 'pending', version = '' WHERE ({condition(KeyState.RUNNING)}) "
        f"AND version LIKE '{MARKER}%%' AND reserved_time < CURRENT_TIMESTAMP(3) - make_interval(secs => %s) "
        f"RETURNING {_quoted(jobs.primary_key)}",
        [lease_seconds],
    )


def tasks_in_flight(table: Any) -> set[str]:
    """Ids of the tasks that carry queued or running keys."""
    jobs = declared_jobs(table)
    rows = jobs.connection.query(
        f"SELECT DISTINCT version FROM {jobs.full_table_name} "
        f"WHERE ({condition(KeyState.QUEUED, KeyState.RUNNING)}) AND version LIKE %s",
        args=(MARKER + "%",),
    ).fetchall()
    return {version.removeprefix(MARKER) for (version,) in rows}


def settle_task(table: Any, task_id: str, error: tuple[str, str] | None) -> list[dict]:
    """queued or running -> failed or unqueued: the keys a finished task left, failed with the task's
    ``(message, traceback)`` if it failed, else given back for the scheduler to queue again. Returns them."""
    jobs = declared_jobs(table)
    in_flight = condition(KeyState.QUEUED, KeyState.RUNNING)
    if error is None:
        return _rows(
            jobs,
            f"UPDATE {jobs.full_table_name} SET status = 'pending', version = '' "
            f"WHERE ({in_flight}) AND version = %s RETURNING {_quoted(jobs.primary_key)}",
            [marker(task_id)],
        )
    keys = _rows(
        jobs,
        f"SELECT {_quoted(jobs.primary_key)} FROM {jobs.full_table_name} WHERE ({in_flight}) AND version = %s",
        [marker(task_id)],
    )
    for key in keys:
        jobs.error(key, error_message=error[0], error_stack=error[1])
    return keys


def withdraw(table: Any, restriction: Any = None) -> set[str]:
    """queued or running -> cancelled: DataJoint's ``ignore`` with the message ``cancelled`` (so that neither the
    scheduler nor ``populate`` takes them up; ``retry`` does). Returns the ids of the tasks that carried them."""
    _, selected = restricted(table, restriction)
    jobs = declared_jobs(table)
    columns = jobs.primary_key
    matches = " AND ".join(f'j."{column}" = old."{column}"' for column in columns)
    rows = jobs.connection.query(
        f"WITH old AS (SELECT {_quoted(columns)}, version FROM {jobs.full_table_name} "
        f"WHERE ({condition(KeyState.QUEUED, KeyState.RUNNING)}) AND version LIKE %s "
        f"AND ({_quoted(columns)}) IN ({selected.proj().make_sql()}) FOR UPDATE) "
        f"UPDATE {jobs.full_table_name} AS j SET status = 'ignore', error_message = %s, version = '' "
        f"FROM old WHERE {matches} RETURNING old.version",
        args=[MARKER + "%", CANCELLED_MESSAGE],
    ).fetchall()
    return {version.removeprefix(MARKER) for (version,) in rows}


def forget(table: Any, restriction: Any, states: Sequence[KeyState]) -> int:
    """failed or cancelled -> missing: deletes the job rows of ``table & restriction`` in ``states``; returns
    how many."""
    if not set(states) <= {KeyState.FAILED, KeyState.CANCELLED}:
        raise ValueError(f"only failed and cancelled keys are forgotten, not {states}")
    _, job_rows = restricted(table, restriction)
    return (job_rows & condition(*states)).delete_quick(get_count=True)


def count_states(table: Any, keys: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many of ``keys`` are done (have a row), queued, running, failed, ... (``COUNTED``)."""
    jobs = declared_jobs(table)
    counts = dict.fromkeys((KeyState.DONE, *COUNTED), 0)
    states = " ".join(f"WHEN {JOB_CONDITIONS[state]} THEN '{state}'" for state in COUNTED)
    for chunk in _chunks([json_key(key) for key in keys]):
        key_condition, args = _key_condition(jobs.primary_key, chunk)
        counts[KeyState.DONE] += table.connection.query(
            f"SELECT count(*) FROM {table.full_table_name} WHERE {key_condition}", args=args
        ).fetchone()[0]
        for state, number in jobs.connection.query(
            f"SELECT CASE {states} END AS state, count(*) FROM {jobs.full_table_name} WHERE {key_condition} GROUP BY 1",
            args=args,
        ).fetchall():
            if state is not None:
                counts[KeyState(state)] += number
    return {str(state): number for state, number in counts.items()}


def count_restricted(table: Any, restriction: Any = None) -> dict[str, int]:
    """``count_states`` for the keys of ``table & restriction``: done, and each counted state of the jobs."""
    source, job_rows = restricted(table, restriction)
    counts = {str(state): len(job_rows & JOB_CONDITIONS[state]) for state in COUNTED}
    return {str(KeyState.DONE): len(table() & source.proj()), **counts}


def failures(table: Any, keys: Sequence[Mapping[str, Any]]) -> list[tuple[dict, str, str]]:
    """``(key, message, traceback)`` of those of ``keys`` that failed."""
    jobs = declared_jobs(table)
    found = []
    for chunk in _chunks([json_key(key) for key in keys]):
        key_condition, args = _key_condition(jobs.primary_key, chunk)
        query = (
            f"SELECT {_quoted(jobs.primary_key)} FROM {jobs.full_table_name} "
            f"WHERE {key_condition} AND ({condition(KeyState.FAILED)})"
        )
        for key in _rows(jobs, query, args):
            found.append((key, *(jobs & key).fetch1("error_message", "error_stack")))
    return found


def error_groups(table: Any, restriction: Any = None) -> list[tuple[str, int]]:
    """``(message, number of keys)`` of the failed keys of ``table & restriction``, one per distinct message,
    the most frequent first."""
    _, job_rows = restricted(table, restriction)
    failed = job_rows & condition(KeyState.FAILED)
    return [
        (message, number)
        for message, number in table.connection.query(
            f"SELECT error_message, count(*) FROM ({failed.make_sql()}) AS failed "
            "GROUP BY error_message ORDER BY count(*) DESC, error_message"
        ).fetchall()
    ]


def finished_recently(table: Any, restriction: Any, seconds: float) -> tuple[int, float] | None:
    """How many keys of ``table & restriction`` finished in the last ``seconds``, and over how many seconds
    (from the earliest start among them, at least one, at most ``seconds``); ``None`` for a table without
    DataJoint's job metadata, which has no record of when its keys finished."""
    instance = table()
    if not instance._has_job_metadata_attrs():
        return None
    keys = restricted(table, restriction)[0].proj()
    number, elapsed = instance.connection.query(
        "SELECT count(*), extract(epoch FROM LOCALTIMESTAMP(3) - min(_job_start_time)) "
        f"FROM {instance.full_table_name} "
        "WHERE _job_start_time + make_interval(secs => _job_duration) > LOCALTIMESTAMP(3) - make_interval(secs => %s) "
        f"AND ({_quoted(keys.heading.names)}) IN ({keys.make_sql()})",
        args=[seconds],
    ).fetchone()
    return number, min(seconds, max(float(elapsed or 0.0), 1.0))


def failed_rows(table: Any, restriction: Any = None, limit: int | None = None) -> list[dict]:
    """The job rows of the failed keys of ``table & restriction``, latest first."""
    _, job_rows = restricted(table, restriction)
    return (job_rows & condition(KeyState.FAILED)).to_dicts(order_by="completed_time DESC", limit=limit)


def missing_keys(table: Any, restriction: Any = None) -> list[dict]:
    """Keys of ``table & restriction`` that enqueue sends: missing or unqueued (no row, no handled job)."""
    source, _ = restricted(table, restriction)
    handled = declared_jobs(table) & condition(*HANDLED)
    candidates = (source - table().proj()).restrict(dj_not(handled), semantic_check=False)
    return [json_key(key) for key in candidates.keys()]  # noqa: SIM118 - a DataJoint query, not a dict


def restricted(table: Any, restriction: Any = None) -> tuple[Any, Any]:
    """The key source and the jobs of ``table`` restricted like ``table & restriction``; keys given as mappings
    are checked and bound as parameters (``mei_service.restrictions``)."""
    source = table().key_source
    if restriction is not None:
        source = source & checked_restriction(table, restriction)
    return source, declared_jobs(table).restrict(source.proj(), semantic_check=False)
