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
import warnings

LOCAL_DATABASE = {
    "DJ_HOST": "127.0.0.1",
    "DJ_PORT": "5432",
    "DJ_USER": "postgres",
    "DJ_PASS": "",
    "DJ_BACKEND": "postgresql",
    "DJ_USE_TLS": "false",
}


# DataJoint's settings the project relies on: MEI tables declared with the hidden job metadata (start and
# duration of each row's computation), from which ``status`` reports throughput and the time to completion;
# DataJoint's own messages only from warnings up (each command says itself which database it uses).
PROJECT_DATAJOINT = {"DJ_JOBS_ADD_JOB_METADATA": "true", "DJ_LOG_LEVEL": "WARNING"}


def apply_local_defaults() -> None:
    """Fills in the unset ``DJ_*`` variables with the local database's and the project's DataJoint settings;
    call it before importing DataJoint."""
    for name, value in {**LOCAL_DATABASE, **PROJECT_DATAJOINT}.items():
        os.environ.setdefault(name, value)
    # The project is configured by these variables (docs/configuration.md), so DataJoint's notice that it
    # found no datajoint.json asks nothing of its users; a datajoint.json that exists is still read.
    warnings.filterwarnings("ignore", message="No datajoint.json found", category=UserWarning)


def endpoints() -> str:
    """Which database, broker and store this process uses, passwords masked: what each process says at start."""
    import datajoint as dj

    from mei.database import store_description
    from mei_service.settings import Settings, redacted

    settings = Settings.from_env()
    database = f"{dj.config['database.user']}@{dj.config['database.host']}:{dj.config['database.port']}"
    return f"database {database}, broker {redacted(settings.broker_url)}, store {store_description()}"
