"""What a row of a table or a message may ask a worker to do: the code it may name and the sizes it may request.

A method row names a function and components by dotted path, an nnfabrik row names builder functions, a task
names a table; importing and calling such a path runs code. Rows are written by lab members and messages
cross the broker, so these paths are checked against an allow-list while ``enforced()`` is active: the
framework's tables enter it where they read a row, and service workers for every task. A path given directly
in Python (a notebook calling ``gradient_ascent`` with its own dict) runs the caller's own code and is not
checked.

The allow-list is ``FRAMEWORK_MODULES`` plus the comma-separated module prefixes of ``MEI_ALLOWED_MODULES``
(the lab's own code; default ``DEFAULT_LAB_MODULES``, the project's demo). A path is allowed when its module
lies under an allowed prefix before it is imported, and the object it resolves to was defined under one too,
so that a re-export (``mei.methods.build_component``) does not widen the list. Helpers that import other
paths (``mei.import_utils``, the nnfabrik builders) are never on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType
from typing import Any

from .errors import ConfigurationError

ALLOWED_MODULES_VARIABLE = "MEI_ALLOWED_MODULES"
# The framework's own components and method functions, and the optimizers of torch.optim.
FRAMEWORK_MODULES = (
    "mei.initial",
    "mei.stoppers",
    "mei.objectives",
    "mei.transforms",
    "mei.regularizers",
    "mei.preconditions",
    "mei.postprocessing",
    "mei.legacy.ops",
    "mei.backgrounds",
    "mei.methods",
    "torch.optim",
)
DEFAULT_LAB_MODULES = ("mei_service.demo.builders", "mei_service.demo.pipeline")
# Sizes a row may request, each with the variable that raises it.
LIMITS = {
    "n_meis": ("MEI_MAX_N_MEIS", 256),
    "iterations": ("MEI_MAX_ITERATIONS", 100_000),
}

_enforced: ContextVar[bool] = ContextVar("mei_policy_enforced", default=False)


class NotAllowedError(ConfigurationError):
    """A row or a message names code outside the allow-list, or asks for more than a limit allows."""


def lab_modules() -> tuple[str, ...]:
    """The module prefixes of lab code that rows and messages may name (``MEI_ALLOWED_MODULES``)."""
    raw = os.environ.get(ALLOWED_MODULES_VARIABLE)
    if raw is None:
        return DEFAULT_LAB_MODULES
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def allowed_modules() -> tuple[str, ...]:
    return FRAMEWORK_MODULES + lab_modules()


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the dotted ``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def is_enforced() -> bool:
    return _enforced.get()


@contextmanager
def enforced() -> Iterator[None]:
    """Checks every path imported and every size requested inside this block (see the module's docstring)."""
    token = _enforced.set(True)
    try:
        yield
    finally:
        _enforced.reset(token)


def enforced_steps(iterator: Iterator[Any]) -> Iterator[Any]:
    """``iterator``'s items, each computed inside ``enforced()``; the caller's code between them is not."""
    while True:
        with enforced():
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


def check_module(path: str, module: str, prefixes: tuple[str, ...] | None = None) -> None:
    """Raises ``NotAllowedError`` unless ``module``, named by ``path``, lies under the allowed prefixes."""
    prefixes = allowed_modules() if prefixes is None else prefixes
    if not under(module, prefixes):
        raise NotAllowedError(
            f"'{path}' is not allowed: module '{module}' is outside the allow-list of paths that rows and messages "
            f"may name; if it is your lab's code, add its module prefix to {ALLOWED_MODULES_VARIABLE} (comma-"
            f"separated, now {','.join(lab_modules()) or 'empty'}) in the environment of every process"
        )


def check_object(path: str, obj: Any) -> None:
    """Raises ``NotAllowedError`` unless ``obj`` (what ``path`` resolved to) was defined in an allowed module."""
    module = None if isinstance(obj, ModuleType) else getattr(obj, "__module__", None)
    if not isinstance(module, str):
        raise NotAllowedError(f"'{path}' is not allowed: it names a module or an object of no module, not code")
    check_module(path, module)


def bounded(what: str, value: int) -> int:
    """``value``, unless ``enforced()`` is active and it exceeds the limit for ``what`` (see ``LIMITS``)."""
    if not is_enforced():
        return value
    variable, default = LIMITS[what]
    raw = os.environ.get(variable, str(default))
    try:
        limit = int(raw)
    except ValueError as error:
        raise ConfigurationError(f"{variable}={raw!r} is not an integer") from error
    if value > limit:
        raise NotAllowedError(f"{what} = {value} exceeds the limit of {limit} for methods in rows; raise {variable}")
    return value
