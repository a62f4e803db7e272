"""A bounded, least-recently-used cache of loaded models, one per process.

Loading a trained ensemble rebuilds its dataloaders and every member; a worker generating many MEIs of one
ensemble should pay that once. Models are shared, not copied: generation leaves a model as it found it
(parameters unfrozen again, training mode restored), so handing the same object to every key is safe.
``MEI_MODEL_CACHE_SIZE`` (default 4) bounds how many ensembles a process keeps.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_SIZE = 4


class ModelCache:
    def __init__(self, maxsize: int | None = None) -> None:
        self.maxsize = int(os.environ.get("MEI_MODEL_CACHE_SIZE", DEFAULT_SIZE)) if maxsize is None else maxsize
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The cached value for ``key``, loaded with ``load()`` on a miss."""
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = load()
        if self.maxsize > 0:
            self._entries[key] = value
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


models = ModelCache()
