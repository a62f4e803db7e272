"""Observing an optimization from outside, without the method function's signature knowing about it.

A caller that wants to watch (a worker reporting progress to its monitor) wraps the call in
``observing(callback)``; the gradient-ascent loop passes every step's ``State`` to ``notify``. Reading a
state's values costs a device-to-host copy, so callbacks should read them sparingly (e.g. every few seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .domain import State

Observer = Callable[[State], None]

_observer: ContextVar[Observer | None] = ContextVar("mei_observer", default=None)


@contextmanager
def observing(callback: Observer) -> Iterator[None]:
    token = _observer.set(callback)
    try:
        yield
    finally:
        _observer.reset(token)


def current_observer() -> Observer | None:
    return _observer.get()
