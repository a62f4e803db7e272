"""An nnfabrik-compatible layer: the same tables, attribute names, builder conventions and hashes.

A lab pipeline written for nnfabrik ports by changing ``from nnfabrik.main import ...`` and
``from nnfabrik.templates.trained_model import TrainedModelBase`` to ``from mei.fabrik import ...``.
"""

from ..hashing import make_hash
from .builder import get_data, get_model, get_trainer
from .tables import Dataset, Fabrikant, Model, Seed, TrainedModelBase, Trainer, schema

__all__ = [
    "Dataset",
    "Fabrikant",
    "Model",
    "Seed",
    "TrainedModelBase",
    "Trainer",
    "get_data",
    "get_model",
    "get_trainer",
    "make_hash",
    "schema",
]
