"""Content hashes of configurations, identical to nnfabrik's so that existing entries keep their keys."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any


def make_hash(obj: Any) -> str:
    """The MD5 hex digest of ``obj``: a str hashes its text; a mapping its keys (sorted by ``str``, unless it is
    an ``OrderedDict``) each followed by the hash of its value; another iterable the hash of each element;
    anything else the text of ``str(obj)``. A list therefore hashes like a tuple, and ``1`` like ``"1"``."""
    hashed = hashlib.md5()
    if isinstance(obj, str):
        hashed.update(obj.encode())
    elif isinstance(obj, Mapping):
        keys = list(obj) if isinstance(obj, OrderedDict) else sorted(obj, key=str)
        for key in keys:
            hashed.update(str(key).encode())
            hashed.update(make_hash(obj[key]).encode())
    elif isinstance(obj, Iterable):
        for element in obj:
            hashed.update(make_hash(element).encode())
    else:
        hashed.update(str(obj).encode())
    return hashed.hexdigest()


def hash_list_of_dictionaries(dictionaries: Iterable[Mapping[str, Any]]) -> str:
    """A hash of a set of dictionaries, independent of their order and of repeats."""
    unique = {make_hash(dictionary): dictionary for dictionary in dictionaries}
    return make_hash([unique[digest] for digest in sorted(unique)])
