"""Turning the dotted paths of method configurations into objects."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from . import policy
from .errors import ConfigurationError


def split_module_name(abs_class_name: str) -> tuple[str, str]:
    """Split ``"pkg.module.Name"`` into ``("pkg.module", "Name")``."""
    module_name, _, object_name = abs_class_name.rpartition(".")
    if not module_name or not object_name:
        raise ConfigurationError(
            f"'{abs_class_name}' is not an absolute path: name the module and the object, "
            "for example 'mei.initial.RandomNormal'"
        )
    return module_name, object_name


def import_object(path: str) -> Any:
    """Import the object that the absolute dotted ``path`` names.

    While ``policy.enforced()`` is active (a path from a row or a message), the module is checked against the
    allow-list before it is imported, and the object's own module after.
    """
    if not isinstance(path, str):
        raise ConfigurationError(f"a path must be a string such as 'mei.initial.RandomNormal', got {path!r}")
    module_name, object_name = split_module_name(path)
    if policy.is_enforced():
        if not all(part.isidentifier() for part in path.split(".")):
            raise policy.NotAllowedError(f"'{path}' is not allowed: it is not a dotted path of Python names")
        policy.check_module(path, module_name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise
        raise ConfigurationError(
            f"Module in '{path}' not found: no module named '{error.name}' is importable here"
        ) from error
    try:
        found = getattr(module, object_name)
    except AttributeError as error:
        raise ConfigurationError(
            f"Object in '{path}' not found: module '{module_name}' has no '{object_name}'"
        ) from error
    if policy.is_enforced():
        policy.check_object(path, found)
    return found


def build_component(role: str, spec: Mapping[str, Any], **extra_kwargs: Any) -> Any:
    """Build a component from its ``{"path": ..., "kwargs": {...}}`` specification.

    ``extra_kwargs`` are passed before the user's kwargs (the optimizer's ``params``).
    """
    if not isinstance(spec, Mapping) or "path" not in spec:
        raise ConfigurationError(
            f"component '{role}' must be a mapping with a 'path' and optional 'kwargs', got {spec!r}"
        )
    unknown = set(spec) - {"path", "kwargs"}
    if unknown:
        raise ConfigurationError(f"component '{role}' has unknown keys {sorted(unknown)}: only 'path' and 'kwargs'")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"the kwargs of component '{role}' must be a mapping, got {kwargs!r}")
    factory = import_object(spec["path"])
    if not callable(factory):
        raise ConfigurationError(f"component '{role}': '{spec['path']}' is not callable")
    try:
        return factory(**extra_kwargs, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(
            f"component '{role}' could not be built as {spec['path']}(**{dict(kwargs)!r}): {error}"
        ) from error
