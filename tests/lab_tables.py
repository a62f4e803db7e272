"""Lab tables for service workers to import: one whose ``make_fetch`` returns numpy arrays, one of video MEIs."""

import os

import datajoint as dj
import numpy as np
import torch

from mei.fabrik import Dataset  # noqa: F401 (named in VideoObjective's definition)
from mei.main import MEITemplate
from mei.modules import ConstrainedOutputModel
from mei.synthetic import VideoLinearNonlinearPopulation, video_filters
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


# A video model: four motion-selective neurons answering (batch, time, neurons) for 6 frames of 8 x 8 pixels.
VIDEO_SHAPE = (1, 1, 6, 8, 8)


@schema
class VideoObjective(dj.Lookup):
    definition = """
    -> Dataset
    neuron_id : int32
    """

    def get_objective(self, model, key):
        # The response to the last two frames' windows: the model answers at 6 - 4 + 1 = 3 time steps.
        return ConstrainedOutputModel(model, key["neuron_id"], time_window=(-2, None))


@schema
class VideoMEI(MEITemplate):
    """MEIs of a lab's video model; the model comes from the lab's own loader, with a batch that gives the shape."""

    trained_model_table = TrainedEnsembleModel
    objective_table = VideoObjective

    def load_model(self, key):
        return video_model()


def video_model():
    filters = video_filters(4, 1, 4, 8, 8, separable=False, seed=5)
    return {"train": {"clips": [torch.zeros(VIDEO_SHAPE)]}}, VideoLinearNonlinearPopulation(filters)
