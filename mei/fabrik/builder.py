"""Building datasets, models and trainers from the dotted-path functions that nnfabrik tables name.

Conventions: ``dataset_fn(seed, **config) -> {"train": {data_key: loader}, ...}``,
``model_fn(dataloaders, seed, **config) -> nn.Module``,
``trainer_fn(model, dataloaders, seed, uid, cb, **config) -> (score, output, model_state)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..import_utils import import_object


def get_data(dataset_fn: str, dataset_config: Mapping[str, Any], seed: int) -> Any:
    return import_object(dataset_fn)(seed=seed, **dataset_config)


def get_model(model_fn: str, model_config: Mapping[str, Any], dataloaders: Any, seed: int) -> nn.Module:
    return import_object(model_fn)(dataloaders, seed=seed, **model_config)


def get_trainer(trainer_fn: str, trainer_config: Mapping[str, Any]) -> Callable[..., tuple[float, Any, Any]]:
    return functools.partial(import_object(trainer_fn), **trainer_config)
