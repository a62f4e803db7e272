"""A small in-silico experiment in the test run's schemas: the demo pipeline with tiny settings."""

DATASET = {"neurons": 4, "height": 12, "width": 16, "rf_seed": 3, "train_images": 600, "validation_images": 100}
MODEL = {"channels": 2, "kernel_size": 3}
TRAINER = {"epochs": 3, "lr": 0.02}
SEEDS = (1, 2)


def quick_method(iterations: int = 20, **overrides) -> dict:
    config = {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": iterations}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 5}},
        "device": "cpu",
    }
    config.update(overrides)
    return config


def fill() -> dict:
    """Enters and trains the experiment (idempotent); returns the keys of dataset, members and ensemble."""
    from mei.fabrik import Dataset, Fabrikant, Model, Seed, Trainer
    from mei_service.demo.pipeline import Objective, TrainedEnsembleModel, TrainedModel

    Fabrikant().insert1({"fabrikant_name": "tester", "dj_username": "tester"}, skip_duplicates=True)
    Seed().insert([{"seed": seed} for seed in SEEDS], skip_duplicates=True)
    dataset = Dataset().add_entry(
        "mei_service.demo.builders.in_silico_v1", DATASET, dataset_fabrikant="tester", skip_duplicates=True
    )
    model = Model().add_entry(
        "mei_service.demo.builders.factorized_cnn", MODEL, model_fabrikant="tester", skip_duplicates=True
    )
    trainer = Trainer().add_entry(
        "mei_service.demo.builders.poisson_trainer", TRAINER, trainer_fabrikant="tester", skip_duplicates=True
    )
    TrainedModel().populate(dataset, model, trainer, [{"seed": seed} for seed in SEEDS])
    members = dict(dataset, **model, **trainer)
    existing = (TrainedEnsembleModel & dataset).keys()
    ensemble = existing[0] if existing else TrainedEnsembleModel().create_ensemble(members, comment="test ensemble")
    Objective().populate(dataset)
    return {"dataset": dataset, "members": members, "ensemble": ensemble}


def reset_seed_tables(trained: dict) -> None:
    """Empties the seed document's tables (tests/seed_pipeline.py) of this experiment's ensemble and neurons."""
    from seed_pipeline import Objective, TrainedEnsembleModel

    (TrainedEnsembleModel & trained["dataset"]).delete()
    (Objective & trained["dataset"]).delete()
