"""The demo, end to end: an in-silico experiment, a trained ensemble and the MEIs of its neurons.

    python -m mei_service.demo [--out demo-output]

1. nnfabrik-style entries: a dataset of white-noise stimuli and the Poisson responses of model neurons with
   known Gabor receptive fields, a small CNN, a trainer;
2. three models trained on it (a few seconds each), joined into an ensemble;
3. the seed document's objective, method and seed tables, and ``MEI().populate()``;
4. a report: each neuron's score and the correlation of its MEI with its true receptive field, and a PNG
   with both side by side.

It uses the PostgreSQL that ``DJ_*`` names (by default the local one) and the schemas ``MEI_DEMO_SCHEMA``,
``MEI_SCHEMA`` and ``MEI_FABRIK_SCHEMA``; the external store defaults to ``<out>/store``. Running it again
reuses what exists and fills in what is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mei_service.local import apply_local_defaults

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


def fill_pipeline() -> dict:
    """Enters the experiment, trains the ensemble and adds objective, method and seeds; returns the MEI
    table's restriction for this demo."""
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
    method = MEIMethod().add_method("mei.methods.gradient_ascent", METHOD, comment="demo method", skip_duplicates=True)
    MEISeed().insert([{"mei_seed": seed} for seed in MEI_SEEDS], skip_duplicates=True)
    return dict(ensemble, **method)


def report(restriction: dict, out: Path) -> float:
    """Prints each MEI's score and its correlation with the true receptive field; saves the figure."""
    from mei.database import store_description
    from mei_service.demo.builders import true_receptive_fields
    from mei_service.demo.pipeline import MEI
    from mei_service.figures import correlation, save_comparison_grid

    fields = true_receptive_fields(**DATASET)
    rows = sorted((MEI & restriction).to_dicts(), key=lambda row: (row["neuron_id"], row["mei_seed"]))
    correlations = [correlation(row["mei"], fields[row["neuron_id"]]) for row in rows]
    print(f"{'neuron':>6} {'seed':>5} {'score':>8} {'corr. with RF':>14}")
    for row, value in zip(rows, correlations, strict=True):
        print(f"{row['neuron_id']:>6} {row['mei_seed']:>5} {row['score']:>8.3f} {value:>14.3f}")
    mean = sum(correlations) / len(correlations)
    figure = save_comparison_grid(
        out / "meis.png",
        [("MEI", [row["mei"][0] for row in rows]), ("true RF", [fields[row["neuron_id"]] for row in rows])],
        [f"neuron {row['neuron_id']}\nr={value:.2f}" for row, value in zip(rows, correlations, strict=True)],
    )
    print(f"mean correlation of MEIs with true receptive fields: {mean:.3f}")
    print(f"MEI rows: {len(rows)} in {MEI.full_table_name}; mei and output in the store at {store_description()}")
    print(f"figure: {figure.resolve()}")
    return mean


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder of the figure (and store)")
    args = parser.parse_args(argv)
    apply_local_defaults()
    os.environ.setdefault("MEI_STORE_LOCATION", str((args.out / "store").resolve()))

    from mei_service.demo.pipeline import MEI

    restriction = fill_pipeline()
    start = time.perf_counter()
    result = MEI().populate(restriction, reserve_jobs=True)
    print(f"generated {result['success_count']} MEIs in {time.perf_counter() - start:.1f} s")
    for key, error in result["error_list"]:
        print(f"failed: {key}: {error}", file=sys.stderr)
    return report(restriction, args.out)


if __name__ == "__main__":
    main()
