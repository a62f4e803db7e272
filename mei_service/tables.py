"""MEI tables named by dotted path, as tasks carry them, and their keys as JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import datajoint as dj

from mei import policy
from mei.import_utils import import_object, split_module_name


def table_path(table: Any) -> str:
    """The dotted import path of a table class, instance or restricted query."""
    cls = table if isinstance(table, type) else type(table)
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_table(path: str) -> Any:
    """Imports the MEI table class at ``path``, a path that a message or a command names.

    Tables are lab code: the module must lie under a prefix of ``MEI_ALLOWED_MODULES`` (the framework's own
    component modules do not count), checked before anything is imported, as every path is (``mei.policy``).
    """
    if not isinstance(path, str):
        raise policy.NotAllowedError(f"a table path must be a string, got {path!r}")
    module, _ = split_module_name(path)
    policy.check_module(path, module, policy.lab_modules())
    with policy.enforced():
        table = import_object(path)
    if not (isinstance(table, type) and issubclass(table, dj.Computed) and hasattr(table, "make_compute_many")):
        raise TypeError(f"'{path}' is not an MEI table (a subclass of mei.main.MEITemplate)")
    return table


def json_key(key: Mapping[str, Any]) -> dict[str, Any]:
    """A primary key with plain JSON values (DataJoint may return numpy integers)."""
    return {name: value.item() if hasattr(value, "item") else value for name, value in key.items()}


def json_keys(keys: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [json_key(key) for key in keys]
