"""Recognising the lab library's classes (neuralpredictors) without importing it.

A module is taken for one of the library's classes only if that class is among its bases, by module and name,
and its ``forward`` is that class's own: a lab's subclass that computes otherwise is not.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

LIBRARY = "neuralpredictors"


def library_class(module: nn.Module, names: Collection[str]) -> type | None:
    """The library's class among ``names`` that ``module`` is an instance of, unless ``module`` computes
    otherwise (its class overrides ``forward``)."""
    for cls in type(module).__mro__:
        if cls.__module__.split(".")[0] == LIBRARY and cls.__name__ in names:
            return cls if type(module).forward is cls.forward else None
    return None
