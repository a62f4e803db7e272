"""The ``<torch>`` DataJoint codec: objects that ``torch.save`` can write, such as tensors and their dicts.

Fetching gives back the object itself (a ``torch.Tensor``, an output dict), not a file to load. Loading
uses ``torch.load(..., weights_only=True)``: tensors, numbers, strings and containers of them, nothing that
could run code. In the external store form ``<torch@store>`` the bytes are hash-addressed by DataJoint.
"""

from __future__ import annotations

import io
from typing import Any

import datajoint as dj
import torch


class TorchCodec(dj.Codec):
    name = "torch"

    def get_dtype(self, is_store: bool) -> str:
        return "<hash>" if is_store else "bytes"

    def encode(self, value: Any, *, key: Any = None, context: Any = None, store_name: str | None = None) -> bytes:
        buffer = io.BytesIO()
        torch.save(_detached(value), buffer)
        return buffer.getvalue()

    def decode(self, stored: Any, *, key: Any = None, context: Any = None) -> Any:
        return torch.load(io.BytesIO(bytes(stored)), weights_only=True, map_location="cpu")


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_detached(item) for item in value)
    return value
