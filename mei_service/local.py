"""The local defaults: every process of the project (the CLI, workers, the demo, ``from mei_service import
...`` in a notebook, the tests) reaches the PostgreSQL on this machine unless told otherwise, so that the
README's commands work without setting a variable, and the store is ``MEI_STORE_LOCATION`` (default
``~/.mei/store``) for all of them.

Only variables that are unset are filled in, so a real deployment's environment always wins. They must be
applied before ``datajoint`` is first imported: DataJoint reads its variables once, at import (without
``DJ_BACKEND`` it would try MySQL's port).
"""

from __future__ import annotations

import os

LOCAL_DATABASE = {
    "DJ_HOST": "127.0.0.1",
    "DJ_PORT": "5432",
    "DJ_USER": "postgres",
    "DJ_PASS": "",
    "DJ_BACKEND": "postgresql",
    "DJ_USE_TLS": "false",
}


def apply_local_defaults() -> None:
    """Fills in the unset ``DJ_*`` variables with the local database's; call it before importing DataJoint."""
    for name, value in LOCAL_DATABASE.items():
        os.environ.setdefault(name, value)


def endpoints() -> str:
    """Which database, broker and store this process uses, passwords masked: what each process says at start."""
    import datajoint as dj

    from mei.database import store_description
    from mei_service.settings import Settings, redacted

    settings = Settings.from_env()
    database = f"{dj.config['database.user']}@{dj.config['database.host']}:{dj.config['database.port']}"
    return f"database {database}, broker {redacted(settings.broker_url)}, store {store_description()}"
