"""Defaults that point every component at services on this machine, for the demo and the tests.

Only variables that are unset are filled in, so a real deployment's environment always wins. They must be
applied before ``datajoint`` is first imported: DataJoint reads its variables once, at import.
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
    for name, value in LOCAL_DATABASE.items():
        os.environ.setdefault(name, value)
