"""A lab's MEI table with a ``make_fetch`` of its own that returns numpy arrays, for service workers to import."""

import os

import datajoint as dj
import numpy as np

from mei.main import MEITemplate
from mei_service.demo.pipeline import Objective, TrainedEnsembleModel

schema = dj.Schema(os.environ["MEI_TEST_LAB_SCHEMA"])


@schema
class ArrayInputsMEI(MEITemplate):
    trained_model_table = TrainedEnsembleModel
    objective_table = Objective

    def make_fetch(self, key):
        (seed,) = super().make_fetch(key)
        return seed, np.arange(3.0), {"offsets": np.ones(2)}

    def make_compute(self, key, seed, weights, extras):
        return super().make_compute(key, seed)
