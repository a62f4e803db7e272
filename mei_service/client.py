"""The notebook's view of the service: enqueue MEIs, watch them, collect errors, retry, cancel.

from mei_service import cancel, enqueue, errors, follow, retry, status
sub = enqueue(MEI & {"mei_seed": 42}, priority=3)
sub.progress()          # a live progress bar until every key is done or failed
sub.errors()            # [(key, message), ...]
status(MEI)             # done / queued / running / failed, throughput and time to go, errors grouped
errors(MEI)             # [(key, message, traceback), ...] of the failed keys, latest first
retry(MEI & key)        # queue failed or cancelled keys again; cancel(MEI & key) withdraws keys
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import datajoint as dj
from celery import Celery

from mei_service import jobs, scheduler
from mei_service.restrictions import RestrictionError
from mei_service.restrictions import restriction as checked_restriction
from mei_service.tables import json_key, table_path


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from mei_service.app import app as default_app

    return default_app


# The recent past over which status reports throughput.
THROUGHPUT_WINDOW = 600.0


def split_query(query: Any, restriction: Any = None) -> tuple[type, Any]:
    """``(table class, restriction)`` of a table class or a restricted table such as ``MEI & key``, and, when
    given, a further ``restriction`` (keys are checked against the table: ``mei_service.restrictions``)."""
    table = query if isinstance(query, type) else type(query)
    if not (hasattr(table, "key_source") and hasattr(table, "make_compute")):
        raise TypeError(f"expected an MEI table or a restriction of one, got {query!r}")
    own = None if isinstance(query, type) or not query.restriction else dj.AndList(query.restriction)
    if restriction is None:
        return table, own
    further = checked_restriction(table, restriction)
    return table, further if own is None else dj.AndList([own, further])


@dataclass
class Status:
    """Where the keys of a table (restricted) or of a submission stand."""

    total: int
    done: int = 0
    queued: int = 0
    unqueued: int = 0
    running: int = 0
    failed: int = 0
    cancelled: int = 0
    ignored: int = 0
    errors: list[tuple[dict, str]] = field(default_factory=list)  # the latest failed keys and their messages
    error_groups: list[tuple[str, int]] = field(default_factory=list)  # each distinct message, how many keys
    meis_per_hour: float | None = None  # over the last THROUGHPUT_WINDOW seconds; None: not recorded

    @property
    def finished(self) -> bool:
        """Nothing is queued or running any more (keys may still be missing: see ``not_queued``)."""
        return self.queued + self.running == 0

    @property
    def not_queued(self) -> int:
        return self.total - self.done - self.queued - self.running - self.failed - self.cancelled - self.ignored

    @property
    def to_go(self) -> int:
        """Keys on their way: queued, running, or known but on no broker (the scheduler sends them)."""
        return self.queued + self.running + self.unqueued

    @property
    def seconds_left(self) -> float | None:
        """The estimated time to completion at the recent throughput; ``None`` when there is none to go by."""
        if not self.to_go:
            return 0.0
        if not self.meis_per_hour:
            return None
        return 3600.0 * self.to_go / self.meis_per_hour

    def as_dict(self) -> dict[str, Any]:
        """Everything ``status --json`` prints."""
        found = asdict(self)
        found["errors"] = [{"key": key, "message": message} for key, message in self.errors]
        found["error_groups"] = [{"message": message, "keys": number} for message, number in self.error_groups]
        return {**found, "not_queued": self.not_queued, "seconds_left": self.seconds_left}

    def __str__(self) -> str:
        lines = [
            f"total {self.total}: done {self.done}, queued {self.queued}, running {self.running}, "
            f"failed {self.failed}, cancelled {self.cancelled}, ignored {self.ignored}, not queued {self.not_queued}"
        ]
        if self.meis_per_hour is None:
            lines.append("  throughput not recorded: the table was declared without DataJoint's job metadata")
        elif self.to_go:
            left = self.seconds_left
            eta = "unknown: none finished recently" if left is None else f"about {_duration(left)}"
            lines.append(
                f"  {self.meis_per_hour:.0f} MEIs per hour over the last {_duration(THROUGHPUT_WINDOW)}; "
                f"{self.to_go} to go, {eta}"
            )
        lines += [f"  {number} failed: {message}" for message, number in self.error_groups]
        if self.error_groups:
            lines.append("  (mei-service errors TABLE shows each failed key with its traceback)")
        return "\n".join(lines)


def _most_first(group: tuple[str, int]) -> tuple[int, str]:
    return -group[1], group[0]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _throughput(table: type, restriction: Any) -> float | None:
    found = jobs.finished_recently(table, restriction, THROUGHPUT_WINDOW)
    if found is None:
        return None
    number, seconds = found
    return 3600.0 * number / seconds


def errors(query: Any, restriction: Any = None, limit: int | None = None) -> list[tuple[dict, str, str]]:
    """``(key, message, traceback)`` of the failed keys of a table or a restriction of it, latest first."""
    table, restriction = split_query(query, restriction)
    rows = jobs.failed_rows(table, restriction, limit)
    primary_key = jobs.declared_jobs(table).primary_key
    return [(json_key({k: row[k] for k in primary_key}), row["error_message"], row["error_stack"]) for row in rows]


def status(query: Any, latest_errors: int = 5) -> Status:
    """Counts of done, queued, running and failed keys of a table or a restriction of it, the recent
    throughput, the failures grouped by message and the ``latest_errors`` latest failed keys."""
    table, restriction = split_query(query)
    source, _ = jobs.restricted(table, restriction)
    counts = jobs.count_restricted(table, restriction)
    found = Status(total=len(source), meis_per_hour=_throughput(table, restriction), **counts)
    if latest_errors and found.failed:
        found.errors = [(key, message) for key, message, _ in errors(table, restriction, limit=latest_errors)]
        found.error_groups = jobs.error_groups(table, restriction)
    return found


def follow(query: Any, timeout: float | None = None, poll: float = 1.0) -> Status:
    """Shows a progress bar over the keys of a table or a restriction of it until none is queued or running
    any more, whoever queued them (this call, an earlier one, the scheduler)."""
    table, _ = split_query(query)

    def current(with_errors: bool = True) -> Status:
        return status(query, latest_errors=5 if with_errors else 0)

    return _follow(current, table_path(table), timeout, poll)


def _follow(current: Any, path: str, timeout: float | None, poll: float) -> Status:
    """``current(with_errors)`` polled under a progress bar until nothing is queued or running, or ``timeout``."""
    from tqdm.auto import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    with tqdm(desc=path.rsplit(".", 1)[-1], unit="MEI") as bar:
        while True:
            found = current(with_errors=False)
            bar.total, bar.n = found.done + found.failed + found.to_go, found.done + found.failed
            left = found.seconds_left
            bar.set_postfix(
                running=found.running,
                queued=found.queued,
                failed=found.failed,
                per_hour="?" if found.meis_per_hour is None else f"{found.meis_per_hour:.0f}",
                eta="?" if left is None else _duration(left),
            )
            bar.refresh()
            if found.finished or (deadline is not None and time.monotonic() > deadline):
                return current(with_errors=True)
            time.sleep(poll)


def _whole_table_guard(action: str, restriction: Any, all: bool) -> None:
    if restriction is None and not all:
        raise RestrictionError(
            f"{action} of a whole table needs all=True (on the command line --all); "
            "otherwise pass a restriction such as {'mei_seed': 42}"
        )


def cancel(query: Any, restriction: Any = None, *, all: bool = False, app: Celery | None = None) -> set[str]:
    """Withdraws the queued and running keys of a table or a restriction of it (``MEI & key``, or ``MEI`` and
    ``restriction``) and stops the tasks that carry them.

    The keys become ``cancelled`` (``retry`` queues them again). A worker stores a key only while it holds its
    job, so no cancelled key is written, except one whose insert was already committing. Other keys of the
    stopped tasks go back to the scheduler. A whole table needs ``all=True``. Returns the ids of the stopped
    tasks.
    """
    table, restriction = split_query(query, restriction)
    _whole_table_guard("cancelling", restriction, all)
    task_ids = jobs.withdraw(table, restriction)
    if task_ids:
        _app(app).control.revoke(sorted(task_ids), terminate=True, signal="SIGKILL")
        for task_id in task_ids:
            jobs.settle_task(table, task_id, None)
    return task_ids


def retry(
    query: Any, restriction: Any = None, *, all: bool = False, app: Celery | None = None, **options: Any
) -> scheduler.Enqueued:
    """Forgets the failures and cancellations of a table or a restriction of it and queues those keys again;
    a whole table needs ``all=True``. ``options`` are ``enqueue``'s (priority, batch_size, queue)."""
    table, restriction = split_query(query, restriction)
    _whole_table_guard("retrying", restriction, all)
    jobs.forget(table, restriction, (jobs.KeyState.FAILED, jobs.KeyState.CANCELLED))
    return scheduler.enqueue(_app(app), table, restriction, **options)


@dataclass
class Submission:
    """The keys one ``enqueue`` call sent, and what became of them."""

    table: type
    restriction: Any
    enqueued: scheduler.Enqueued
    app: Celery

    @property
    def keys(self) -> list[dict]:
        return self.enqueued.keys

    @property
    def task_ids(self) -> list[str]:
        return [batch.task_id for batch in self.enqueued.batches]

    def status(self, with_errors: bool = True) -> Status:
        """Where this submission's keys stand; the throughput is that of the query it was enqueued with."""
        counts = jobs.count_states(self.table, self.keys)
        found = Status(total=len(self.keys), meis_per_hour=_throughput(self.table, self.restriction), **counts)
        if with_errors and found.failed:
            failed = jobs.failures(self.table, self.keys)
            found.errors = [(key, message) for key, message, _ in failed]
            found.error_groups = sorted(Counter(message for _, message in found.errors).items(), key=_most_first)
        return found

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> Status:
        """Blocks until no key is queued or running any more; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.status(with_errors=False).finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"not finished after {timeout} s: {self.status()}")
            time.sleep(poll)
        return self.status()

    def progress(self, timeout: float | None = None, poll: float = 1.0) -> Status:
        """Shows a progress bar that follows the keys until none is queued or running any more."""
        return _follow(self.status, table_path(self.table), timeout, poll)

    def errors(self) -> list[tuple[dict, str]]:
        """``(key, message)`` of this submission's failed keys; tracebacks are in the table's jobs."""
        return [(key, message) for key, message, _ in jobs.failures(self.table, self.keys)]

    def cancel(self) -> set[str]:
        """Withdraws the queued keys and stops the running ones (see ``cancel``)."""
        return cancel(self.table, self.keys, app=self.app)

    def __repr__(self) -> str:
        return f"Submission({table_path(self.table)}, {len(self.keys)} keys in {len(self.task_ids)} tasks)"


def enqueue(
    query: Any,
    *,
    priority: int | None = None,
    batch_size: int | None = None,
    queue: str | None = None,
    app: Celery | None = None,
) -> Submission:
    """Queues the missing MEIs of a table or a restriction of it (``MEI & key``) for the workers."""
    table, restriction = split_query(query)
    app = _app(app)
    sent = scheduler.enqueue(app, table, restriction, priority=priority, batch_size=batch_size, queue=queue)
    return Submission(table, restriction, sent, app)
