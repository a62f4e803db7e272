"""MEI tables named by dotted path, as tasks carry them, and their keys as JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import datajoint as dj

from mei.import_utils import import_object, split_module_name
from mei_service.settings import Settings


class TableNotAllowedError(PermissionError):
    """The task names a table outside the configured allow-list."""


def table_path(table: Any) -> str:
    """The dotted import path of a table class, instance or restricted query."""
    cls = table if isinstance(table, type) else type(table)
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_table(path: str, settings: Settings) -> Any:
    """Imports the table class at ``path`` if its module is allowed; nothing outside the allow-list is imported."""
    module, _ = split_module_name(path)
    if not any(module == prefix or module.startswith(prefix + ".") for prefix in settings.allowed_modules):
        raise TableNotAllowedError(
            f"table '{path}' is not in an allowed module; add its module prefix to MEI_SERVICE_ALLOWED_MODULES "
            f"(now {','.join(settings.allowed_modules) or 'empty'})"
        )
    table = import_object(path)
    if not (isinstance(table, type) and issubclass(table, dj.Computed) and hasattr(table, "make_compute_many")):
        raise TypeError(f"'{path}' is not an MEI table (a subclass of mei.main.MEITemplate)")
    return table


def json_key(key: Mapping[str, Any]) -> dict[str, Any]:
    """A primary key with plain JSON values (DataJoint may return numpy integers)."""
    return {name: value.item() if hasattr(value, "item") else value for name, value in key.items()}


def json_keys(keys: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [json_key(key) for key in keys]
