"""The seed document's table workflow on DataJoint 2.3 and the real PostgreSQL."""

import subprocess
import sys
from pathlib import Path

import datajoint as dj
import experiment
import mymodule
import pytest
import torch
from conftest import SCHEMA_PREFIX, STORE_LOCATION

from mei.errors import ConfigurationError
from mei.fabrik import Dataset, Model
from mei.hashing import hash_list_of_dictionaries, make_hash
from mei.main import MEIMethod, MEISeed, MEITemplate
from mei.methods import gradient_ascent
from mei.model_cache import ModelCache, models
from mei.modules import ConstrainedOutputModel, ContrastiveOutputModel
from mei.results import best_per_unit
from mei_service.demo.pipeline import MEI, Objective, TrainedEnsembleModel, TrainedModel
from mei_service.demo.pipeline import TrainedEnsembleModel as DemoEnsemble


def stored_objects() -> set[str]:
    return {path.name for path in Path(STORE_LOCATION).rglob("*") if path.is_file()}


def referenced_objects(table) -> set[str]:
    """The store objects that the rows of ``table`` point to (content-addressed: equal results share one)."""
    rows = dj.conn().query(f"SELECT mei, output FROM {table.full_table_name}").fetchall()
    return {Path(reference["path"]).name for row in rows for reference in row}


def test_seed_document_blocks_run_verbatim(trained, clean_framework_tables):
    # The seed's table blocks are in tests/seed_pipeline.py, verbatim; its workflow blocks follow, verbatim but
    # for the device and the lab's own key.
    from seed_pipeline import MEI, Objective, TrainedEnsembleModel

    experiment.reset_seed_tables(trained)
    key = trained["members"]
    TrainedEnsembleModel().create_ensemble(key, comment="My ensemble")
    Objective().populate()
    units = experiment.DATASET["neurons"]
    Objective().insert(
        [dict(trained["dataset"], neuron_id=unit, output_unit=unit) for unit in range(units)], allow_direct_insert=True
    )

    from mei.main import MEIMethod

    method_fn = "mei.methods.gradient_ascent"
    method_config = {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 1000}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
        "device": "cpu",
    }
    MEIMethod().add_method(method_fn, method_config, comment="My MEI method")

    from mei.main import MEISeed

    MEISeed().insert1({"mei_seed": 42})
    MEI().populate()
    # --- end of the seed's blocks ---
    assert len(MEI()) == units
    row = (MEI & {"neuron_id": 1}).fetch1()
    assert isinstance(row["mei"], torch.Tensor) and row["mei"].shape == (1, 1, 12, 16)
    log = row["output"]["mei.objectives.EvaluationObjective"]
    assert log["times"] == list(range(0, 1001, 10))
    assert row["score"] == pytest.approx(log["values"][-1])
    assert row["method_hash"] == make_hash(method_config)
    assert (TrainedEnsembleModel & key).fetch1("ensemble_comment") == "My ensemble"
    demo_parts = (DemoEnsemble.Member.full_table_name, TrainedModel.ModelStorage.full_table_name)
    assert TrainedEnsembleModel.Member.full_table_name not in demo_parts


class TestEnsembles:
    def test_hash_and_members(self, trained):
        members = (TrainedModel & trained["dataset"]).keys()
        ensemble = (TrainedEnsembleModel & trained["ensemble"]).fetch1()
        assert ensemble["ensemble_hash"] == hash_list_of_dictionaries(members)
        assert len(TrainedEnsembleModel.Member & trained["ensemble"]) == len(experiment.SEEDS)

    def test_key_must_restrict_the_dataset_table_to_one_entry(self, trained):
        Dataset().add_entry(
            "mei_service.demo.builders.in_silico_v1", {"neurons": 2}, dataset_fabrikant="tester", skip_duplicates=True
        )
        message = "Provided key not sufficient to restrict dataset table to one entry!"
        with pytest.raises(ValueError, match=message):
            TrainedEnsembleModel().create_ensemble({})
        with pytest.raises(ValueError, match=message):
            TrainedEnsembleModel().create_ensemble({"dataset_hash": "no such hash"})

    def test_ensemble_needs_members(self, trained):
        other = Dataset().add_entry(
            "mei_service.demo.builders.in_silico_v1", {"neurons": 2}, dataset_fabrikant="tester", skip_duplicates=True
        )
        with pytest.raises(ValueError, match="no trained models match"):
            TrainedEnsembleModel().create_ensemble(other)

    def test_load_model_rebuilds_trained_members(self, trained):
        member = (TrainedModel & trained["dataset"]).keys()[0]
        dataloaders, model = TrainedModel().load_model(member)
        _, untrained = TrainedModel().load_model(member, include_state_dict=False)
        _, again = TrainedModel().load_model(member)
        images, _ = next(iter(next(iter(dataloaders["validation"].values()))))
        with torch.no_grad():
            assert torch.equal(model.eval()(images), again.eval()(images))
            assert not torch.equal(model(images), untrained.eval()(images))
        loaders, ensemble = TrainedEnsembleModel().load_model(trained["ensemble"])
        assert len(ensemble.members) == len(experiment.SEEDS) and "train" in loaders


class TestMethods:
    def test_add_method_validates_before_inserting(self, database, clean_framework_tables):
        with pytest.raises(ConfigurationError, match=r"Module in 'mymodule\.nothing\.Here' not found"):
            MEIMethod().add_method(
                "mei.methods.gradient_ascent", experiment.quick_method(initial={"path": "mymodule.nothing.Here"})
            )
        with pytest.raises(ConfigurationError, match=r"Object in 'mei\.methods\.ascent' not found"):
            MEIMethod().add_method("mei.methods.ascent", experiment.quick_method())
        misspelt = {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iteration": 10}}
        with pytest.raises(ConfigurationError, match=r"'stopper'.*'num_iteration'.*\['num_iterations'\]"):
            MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(stopper=misspelt))
        wrong = {"path": "torch.optim.SGD", "kwargs": {"learning_rate": 1.0}}
        with pytest.raises(ConfigurationError, match=r"'optimizer' \(torch\.optim\.SGD\).*'learning_rate'.*'lr'"):
            MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(optimizer=wrong))
        blur = {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1, "radius": 3}}
        with pytest.raises(ConfigurationError, match=r"'precondition'.*'radius'"):
            MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(precondition=blur))
        noise = {"mean": 0, "std": 1, "shape": [1, 1, 12, 16], "strenght": 1}
        background = {"path": "mei.backgrounds.WhiteNoiseBackground", "kwargs": noise}
        with pytest.raises(ConfigurationError, match=r"'background'.*'strenght'"):
            MEIMethod().add_method(
                "mei.methods.gradient_ascent", experiment.quick_method(transparency=True, background=background)
            )
        assert len(MEIMethod()) == 0

    def test_cuda_method_can_be_added_without_a_gpu_and_duplicates_are_refused(self, database, clean_framework_tables):
        config = experiment.quick_method(device="cuda")
        key = MEIMethod().add_method("mei.methods.gradient_ascent", config)
        assert key["method_hash"] == make_hash(config)
        with pytest.raises(ValueError, match="already in MEIMethod"):
            MEIMethod().add_method("mei.methods.gradient_ascent", config)
        assert MEIMethod().add_method("mei.methods.gradient_ascent", config, skip_duplicates=True) == key


class TestFabrik:
    def test_add_entry_conventions(self, trained):
        config = {"channels": 3}
        key = Model().add_entry("mei_service.demo.builders.factorized_cnn", config, model_fabrikant="tester")
        assert key == {"model_fn": "mei_service.demo.builders.factorized_cnn", "model_hash": make_hash(config)}
        with pytest.raises(ValueError, match="already in Model"):
            Model().add_entry("mei_service.demo.builders.factorized_cnn", config, model_fabrikant="tester")
        with pytest.raises(ConfigurationError, match="not found"):
            Model().add_entry("mei_service.demo.builders.missing", config, model_fabrikant="tester")
        with pytest.raises(ValueError, match="pass model_fabrikant"):
            Model().add_entry("mei_service.demo.builders.factorized_cnn", {"channels": 5})
        (Model & key).delete()


class TestPopulate:
    def test_meis_land_in_the_file_store_and_equal_a_direct_run(self, trained, clean_framework_tables):
        method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method())
        MEISeed().insert([{"mei_seed": 1}, {"mei_seed": 2}])
        MEI().populate(trained["ensemble"], method)
        rows = (MEI & method).to_dicts()
        assert len(rows) == experiment.DATASET["neurons"] * 2
        assert len(referenced_objects(MEI)) == 2 * len(rows)
        assert referenced_objects(MEI) <= stored_objects()
        row = (MEI & method & {"neuron_id": 2, "mei_seed": 2}).fetch1()
        loaders, ensemble = TrainedEnsembleModel().load_model(trained["ensemble"])
        mei, score, output = gradient_ascent(loaders, ConstrainedOutputModel(ensemble, 2), experiment.quick_method(), 2)
        assert torch.equal(row["mei"], mei) and row["score"] == score and row["output"] == output

    def test_failed_key_leaves_no_row_nor_object_and_others_complete(self, trained, clean_framework_tables):
        broken = dict(trained["dataset"], neuron_id=99)
        Objective().insert1(dict(broken, output_unit=999), allow_direct_insert=True)
        try:
            method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method())
            MEISeed().insert1({"mei_seed": 7})
            before = stored_objects()
            result = MEI().populate(trained["ensemble"], method, reserve_jobs=True, suppress_errors=True)
            assert result["success_count"] == experiment.DATASET["neurons"]
            assert [key["neuron_id"] for key, _ in result["error_list"]] == [99]
            assert not MEI & broken
            assert stored_objects() - before <= referenced_objects(MEI)
            error = (MEI.jobs & broken).fetch1()
            assert error["status"] == "error" and "IndexError" in error["error_stack"]
            assert "index 999 is out of bounds" in error["error_message"]
        finally:
            (MEI.jobs & broken).delete()
            (Objective & broken).delete()

    def test_generation_runs_outside_the_transaction_on_one_cached_model(self, trained, clean_framework_tables):
        method = MEIMethod().add_method("mymodule.transaction_probe", {})
        MEISeed().insert1({"mei_seed": 3})
        models.clear()
        mymodule.seen_models.clear()
        misses = models.misses
        MEI().populate(trained["ensemble"], method)
        scores = [row["score"] for row in (MEI & method).to_dicts()]
        assert scores == [0.0] * experiment.DATASET["neurons"]
        assert models.misses == misses + 1
        assert len({id(model) for model in mymodule.seen_models}) == 1

    def test_selector_table_with_get_output_selected_model(self, trained, clean_framework_tables):
        schema = dj.Schema(f"{SCHEMA_PREFIX}_selector")

        @schema
        class Selector(dj.Lookup):
            definition = """
            -> self.dataset_table
            neuron_id : int32
            """

            dataset_table = Dataset

            def get_output_selected_model(self, model, key):
                return ConstrainedOutputModel(model, key["neuron_id"])

        @schema
        class SelectedMEI(MEITemplate):
            trained_model_table = TrainedEnsembleModel
            selector_table = Selector

        Selector().insert1(dict(trained["dataset"], neuron_id=1))
        method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method())
        MEISeed().insert1({"mei_seed": 5})
        SelectedMEI().populate()
        assert isinstance((SelectedMEI & method).fetch1("mei"), torch.Tensor)

    def test_an_objective_table_of_contrasts_gives_most_discriminative_stimuli(self, trained, clean_framework_tables):
        schema = dj.Schema(f"{SCHEMA_PREFIX}_contrast")

        @schema
        class Contrast(dj.Lookup):
            definition = """
            -> self.dataset_table
            neuron_id : int32      # the neuron to drive
            ---
            against : int32        # the neuron to hold down
            temperature : float64
            """

            dataset_table = Dataset

            def get_objective(self, model, key):
                against, temperature = (self & key).fetch1("against", "temperature")
                return ContrastiveOutputModel(model, key["neuron_id"], others=[against], temperature=temperature)

        @schema
        class ContrastMEI(MEITemplate):
            trained_model_table = TrainedEnsembleModel
            objective_table = Contrast

        Contrast().insert1(dict(trained["dataset"], neuron_id=1, against=2, temperature=0.5))
        method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations=60))
        MEISeed().insert1({"mei_seed": 5})
        ContrastMEI().populate()
        stimulus, score = (ContrastMEI & method).fetch1("mei", "score")
        _, model = TrainedEnsembleModel().load_model(trained["ensemble"])
        responses, blank = model(stimulus)[0], model(torch.zeros_like(stimulus))[0]
        assert responses[1] > blank[1] and responses[2] < blank[2]
        assert score < 0, "a log-softmax"

    def test_the_best_mei_of_each_unit_is_the_best_scoring_seed(self, trained, clean_framework_tables):
        method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations=5))
        inhibitory = MEIMethod().add_method(
            "mei.methods.gradient_ascent", experiment.quick_method(iterations=5, inhibitory=True)
        )
        MEISeed().insert([{"mei_seed": seed} for seed in (1, 2, 3)])
        MEI().populate(trained["ensemble"])
        meis = MEI & trained["ensemble"]
        best = best_per_unit(meis)
        units = {(key["neuron_id"], key["method_hash"]) for key in best}
        assert len(best) == len(units) == 2 * experiment.DATASET["neurons"], "one per unit and method"
        for key in best:
            group = {name: value for name, value in key.items() if name != "mei_seed"}
            scores = dict(zip(*(meis & group).to_arrays("mei_seed", "score"), strict=True))
            assert scores[key["mei_seed"]] == max(scores.values())
        assert len(meis & best) == len(best)
        assert {key["method_hash"] for key in best} == {method["method_hash"], inhibitory["method_hash"]}


def test_model_cache_is_bounded_and_least_recently_used():
    cache = ModelCache(maxsize=2)
    loads = []

    def loader(name):
        return lambda: loads.append(name) or name

    for name in ("a", "b", "a", "c", "a", "b"):
        cache.get(name, loader(name))
    assert loads == ["a", "b", "c", "b"]
    assert len(cache) == 2 and cache.hits == 2
    uncached = ModelCache(maxsize=0)
    uncached.get("a", loader("a"))
    assert len(uncached) == 0


def test_importing_the_tables_needs_no_database():
    code = (
        "import mei.main, mei.fabrik, mei_service.demo.pipeline\n"
        "print('imported')\n"
        "try:\n    mei.main.MEIMethod()\nexcept Exception as error:\n    print('used:', type(error).__name__)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "DJ_HOST": "127.0.0.1", "DJ_PORT": "9", "DJ_USER": "nobody", "DJ_PASS": ""}
    env |= {"DJ_BACKEND": "postgresql", "DJ_USE_TLS": "false"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.splitlines()[0] == "imported", result.stderr
    assert result.stdout.splitlines()[1].startswith("used:")
