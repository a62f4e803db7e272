"""The demo lab's DataJoint pipeline, written as the seed document shows a lab writing one.

Its schema is ``MEI_DEMO_SCHEMA`` (default ``mei_demo``), activated on first use. Workers import the MEI
table as ``mei_service.demo.pipeline.MEI``.
"""

from __future__ import annotations

import datajoint as dj

from mei.database import ActivatesSchema, LazySchema
from mei.fabrik import Dataset, TrainedModelBase
from mei.main import MEITemplate, TrainedEnsembleModelTemplate
from mei.modules import ConstrainedOutputModel

schema = LazySchema("MEI_DEMO_SCHEMA", "mei_demo")


@schema
class TrainedModel(ActivatesSchema, TrainedModelBase):
    pass


@schema
class TrainedEnsembleModel(ActivatesSchema, TrainedEnsembleModelTemplate):
    dataset_table = Dataset
    trained_model_table = TrainedModel


@schema
class Objective(ActivatesSchema, dj.Computed):
    definition = """
    -> self.dataset_table
    neuron_id: int32
    ---
    output_unit: int32
    """

    dataset_table = Dataset

    def make(self, key):
        """Fills the table: one entry per model neuron of the dataset."""
        neurons = (self.dataset_table & key).fetch1("dataset_config")["neurons"]
        self.insert([dict(key, neuron_id=neuron, output_unit=neuron) for neuron in range(neurons)])

    def get_objective(self, model, key):
        output_unit = (self & key).fetch1("output_unit")
        return ConstrainedOutputModel(model, output_unit)


@schema
class MEI(ActivatesSchema, MEITemplate):
    trained_model_table = TrainedEnsembleModel
    objective_table = Objective
