"""A lab pipeline around the benchmark model, for benchmarks of the service (schema ``MEI_BENCH_SCHEMA``).

Models are the Sensorium-scale architecture of ``bench.sensorium`` with random weights fixed by the seed:
"training" stores them as they are built. The dataset is random images of the model's input shape.
"""

from __future__ import annotations

import datajoint as dj
import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.sensorium import FULL, TINY, build_model
from mei.database import ActivatesSchema, LazySchema
from mei.fabrik import Dataset, TrainedModelBase
from mei.main import MEITemplate, TrainedEnsembleModelTemplate
from mei.modules import ConstrainedOutputModel

SIZES = {"tiny": TINY, "full": FULL}
schema = LazySchema("MEI_BENCH_SCHEMA", "mei_bench")


def random_images(seed: int, size: str = "tiny", images: int = 8) -> dict:
    shape = SIZES[size].input_shape
    inputs = torch.randn(images, *shape, generator=torch.Generator().manual_seed(seed))
    return {"train": {"bench": DataLoader(TensorDataset(inputs), batch_size=images)}}


def sensorium(dataloaders: dict, seed: int, size: str = "tiny") -> torch.nn.Module:
    return build_model(SIZES[size], seed=seed)


def keep_weights(model, dataloaders, seed, uid=None, cb=None) -> tuple[float, dict, dict]:
    return 0.0, {}, model.state_dict()


@schema
class TrainedModel(ActivatesSchema, TrainedModelBase):
    pass


@schema
class TrainedEnsembleModel(ActivatesSchema, TrainedEnsembleModelTemplate):
    dataset_table = Dataset
    trained_model_table = TrainedModel


@schema
class Unit(ActivatesSchema, dj.Lookup):
    definition = """
    -> self.dataset_table
    unit_id : int32
    """

    dataset_table = Dataset

    def get_objective(self, model, key):
        return ConstrainedOutputModel(model, key["unit_id"])


@schema
class MEI(ActivatesSchema, MEITemplate):
    trained_model_table = TrainedEnsembleModel
    objective_table = Unit
