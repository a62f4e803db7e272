"""The seed document's tables, verbatim, in a module that service workers can import."""

import os

import datajoint as dj

from mei.fabrik import Dataset
from mei_service.demo.pipeline import TrainedModel

schema = dj.Schema(os.environ["MEI_TEST_SEED_SCHEMA"])

from mei.main import TrainedEnsembleModelTemplate  # noqa: E402


@schema
class TrainedEnsembleModel(TrainedEnsembleModelTemplate):
    dataset_table = Dataset
    trained_model_table = TrainedModel


from mei.modules import ConstrainedOutputModel  # noqa: E402


@schema
class Objective(dj.Computed):
    definition = """
    -> self.dataset_table
    neuron_id: int
    ---
    output_unit: int
    """

    dataset_table = Dataset

    def make(self, key):
        """Fills the table."""

    def get_objective(self, model, key):
        output_unit = (self & key).fetch1("output_unit")
        return ConstrainedOutputModel(model, output_unit)


from mei.main import MEITemplate  # noqa: E402


@schema
class MEI(MEITemplate):
    trained_model_table = TrainedEnsembleModel
    objective_table = Objective
