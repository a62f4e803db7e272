"""Which failures are worth a retry: lost connections to the database, the broker or the store.

Anything else that goes wrong with a key (a bad config, a model that fails) is permanent: it is recorded on
the key and not retried.
"""

from __future__ import annotations

import contextlib

import datajoint as dj
import psycopg2
import redis

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    dj.errors.LostConnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def is_transient(error: BaseException | None) -> bool:
    """True when ``error`` or an error it was raised from is a lost connection."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, TRANSIENT_TYPES):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def reconnect_database() -> None:
    """Opens a new database connection in place of a lost one, if the database is back; else the next try will.

    A connection lost inside a transaction leaves DataJoint believing the transaction is open; it is closed here
    so that the next one can start.
    """
    connection = dj.conn()
    with contextlib.suppress(Exception):  # the database is still away: the caller tries again later
        connection.connect()
        connection.cancel_transaction()
