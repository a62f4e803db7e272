"""The demo's in-silico experiment, one recipe for the demo, the example notebook and the tests that follow
them: nnfabrik-style entries for white-noise stimuli and the Poisson responses of model neurons with known
Gabor receptive fields, a small CNN and a trainer; three trained models joined into an ensemble; the seed
document's objective, method and seed tables.
"""

from __future__ import annotations

import time

DATASET = {"neurons": 16, "height": 24, "width": 32, "rf_seed": 0}
MODEL = {"channels": 4, "kernel_size": 5}
TRAINER = {"epochs": 20, "lr": 0.01}
TRAINING_SEEDS = (1, 2, 3)
MEI_SEEDS = (42,)
METHOD = {
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 200}},
    "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
    "precondition": {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
    "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 10}},
    "device": "cpu",
}


def fill_pipeline(device: str = "cpu") -> dict:
    """Enters the experiment, trains the ensemble and adds objective, method (generating on ``device``) and
    seeds; returns the MEI table's restriction for this demo."""
    from mei.fabrik import Dataset, Fabrikant, Model, Seed, Trainer
    from mei.main import MEIMethod, MEISeed
    from mei_service.demo.pipeline import Objective, TrainedEnsembleModel, TrainedModel

    Fabrikant().insert1({"fabrikant_name": "demo", "dj_username": "demo"}, skip_duplicates=True)
    Seed().insert([{"seed": seed} for seed in TRAINING_SEEDS], skip_duplicates=True)
    owner = {"skip_duplicates": True}
    dataset = Dataset().add_entry(
        "mei_service.demo.builders.in_silico_v1",
        DATASET,
        dataset_fabrikant="demo",
        dataset_comment="LN neurons",
        **owner,
    )
    model = Model().add_entry("mei_service.demo.builders.factorized_cnn", MODEL, model_fabrikant="demo", **owner)
    trainer = Trainer().add_entry(
        "mei_service.demo.builders.poisson_trainer", TRAINER, trainer_fabrikant="demo", **owner
    )
    start = time.perf_counter()
    TrainedModel().populate(dataset, model, trainer, [{"seed": seed} for seed in TRAINING_SEEDS])
    print(f"trained models: {len(TrainedModel() & dataset)} ({time.perf_counter() - start:.1f} s)")
    members = dict(dataset, **model, **trainer)
    ensembles = (TrainedEnsembleModel & dataset).keys()
    ensemble = ensembles[0] if ensembles else TrainedEnsembleModel().create_ensemble(members, comment="My ensemble")
    Objective().populate(dataset)
    method = MEIMethod().add_method(
        "mei.methods.gradient_ascent", dict(METHOD, device=device), comment="demo method", skip_duplicates=True
    )
    MEISeed().insert([{"mei_seed": seed} for seed in MEI_SEEDS], skip_duplicates=True)
    return dict(ensemble, **method)
