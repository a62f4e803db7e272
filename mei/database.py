"""How the framework's tables meet DataJoint: schema names and the external store, from the environment.

DataJoint itself reads its connection from ``DJ_*`` variables when it is imported (``DJ_HOST``, ``DJ_USER``,
``DJ_PASS``, ``DJ_BACKEND=postgresql``, ...). The framework adds:

- ``MEI_SCHEMA`` (default ``mei``): the schema of ``MEIMethod`` and ``MEISeed``;
- ``MEI_FABRIK_SCHEMA`` (default ``nnfabrik_core``): the schema of the nnfabrik-compatible tables;
- ``MEI_STORE`` (default ``mei``): the external store that MEIs, outputs and model states go to;
- ``MEI_STORE_LOCATION`` (default ``~/.mei/store``): the folder of that store when DataJoint's configuration
  (``DJ_STORES`` or ``dj.config["stores"]``) does not define it.

Nothing connects at import: a schema is activated, and the database reached, when one of its tables is first
used.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, ClassVar

import datajoint as dj

DEFAULT_STORE_LOCATION = "~/.mei/store"


def store_name() -> str:
    """The external store's name; configures it, as a local folder, where DataJoint's stores lack it.

    Called when the tables that use the store are imported, so that a process which only fetches (a worker,
    a notebook) finds the store configured."""
    name = os.environ.get("MEI_STORE", "mei")
    stores = dict(dj.config["stores"] or {})
    if name not in stores:
        location = Path(os.environ.get("MEI_STORE_LOCATION", DEFAULT_STORE_LOCATION)).expanduser()
        location.mkdir(parents=True, exist_ok=True)
        stores[name] = {"protocol": "file", "location": str(location)}
        stores.setdefault("default", name)
        dj.config["stores"] = stores
    return name


class LazySchema(dj.Schema):
    """A schema named by an environment variable and activated when one of its tables is first used.

    Its tables inherit ``ActivatesSchema``, which activates the schema when the table is instantiated, as
    every use of a DataJoint table does (``Table()``, ``Table & key``, ``Table.insert1``, a foreign key).
    """

    def __init__(self, variable: str, default: str) -> None:
        super().__init__()
        self.variable = variable
        self.default = default

    def __call__(self, cls: type, **kwargs: Any) -> type:
        if not issubclass(cls, ActivatesSchema):
            raise TypeError(f"tables of a LazySchema inherit ActivatesSchema; {cls.__name__} does not")
        cls.lazy_schema = self
        kwargs.setdefault("context", inspect.currentframe().f_back.f_locals)
        return super().__call__(cls, **kwargs)

    def activate_on_use(self) -> None:
        if self.database is None:
            self.activate(os.environ.get(self.variable, self.default))


class ActivatesSchema:
    """Mixin for the tables of a ``LazySchema``."""

    lazy_schema: ClassVar[LazySchema]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lazy_schema.activate_on_use()
        super().__init__(*args, **kwargs)


def store_description() -> str:
    """Where the external store keeps its objects, for messages: ``file:/path`` or ``s3://bucket/location``."""
    name = store_name()  # first: it may configure the store, replacing dj.config["stores"]
    spec = dj.config["stores"][name]
    if spec["protocol"] == "file":
        return f"file:{spec['location']}"
    return f"{spec['protocol']}://{spec.get('bucket', '')}/{spec['location']}"


class PartsPerSubclass:
    """Mixin for table templates with part tables: each subclass gets part classes of its own.

    DataJoint binds a part class to the master it is declared with; a part class inherited from a template
    would be bound to the last master declared and shared by all of them.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            for name, inherited in vars(base).items():
                if isinstance(inherited, type) and issubclass(inherited, dj.Part) and name not in vars(cls):
                    setattr(cls, name, type(name, (inherited,), {"__module__": cls.__module__}))
