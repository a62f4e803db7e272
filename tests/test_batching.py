"""Batched generation: every key of a batch gets its one-at-a-time MEI, score and output."""

import logging

import pytest
import torch
from conftest import seed_method_config

from bench.sensorium import TINY, build_ensemble, build_model
from mei.batching import configured_batch_size, generate_many, gradient_ascent_batch, why_not_batched
from mei.errors import ConfigurationError
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel, EnsembleModel, selected_outputs

SHAPE = (1, *TINY.input_shape)
KEYS = 32
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ensemble():
    return build_ensemble(TINY)


def config(**overrides) -> dict:
    return {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 12}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 3}}],
        "precondition": {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 25}},
        "device": "cpu",
        **overrides,
    }


EARLY_STOPPING = {
    "optimizer": {"path": "torch.optim.AdamW", "kwargs": {"lr": 0.05, "weight_decay": 0.01}},
    "stopper": {
        "path": "mei.stoppers.EarlyStopping",
        "kwargs": {"patience": 2, "min_iter": 3, "max_iter": 40, "min_delta": 0.01},
    },
    "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
}
CASES = {
    "sgd": config(),
    "sgd-momentum-with-transform-and-regularization": config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.1, "momentum": 0.9, "nesterov": True}},
        transform={"path": "mei.legacy.ops.ChangeRange", "kwargs": {"x_min": -2.0, "x_max": 2.0}},
        regularization={"path": "mei.legacy.ops.TotalVariation", "kwargs": {"weight": 0.01}},
    ),
    "adam-two-meis-per-key": config(
        optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.05}},
        postprocessing={"path": "mei.postprocessing.PNormConstraintAndClip", "kwargs": {"norm_value": 20}},
        n_meis=2,
    ),
    "adamw-early-stopping": config(**EARLY_STOPPING),
}


def assert_equal_results(batched, single):
    mei, score, output = batched
    expected_mei, expected_score, expected_output = single
    assert mei.shape == expected_mei.shape
    assert torch.allclose(mei, expected_mei, atol=TOLERANCE, rtol=0)
    assert score == pytest.approx(expected_score, abs=TOLERANCE)
    assert output.keys() == expected_output.keys()
    for name, log in output.items():
        assert log["times"] == expected_output[name]["times"]
        assert log["values"] == pytest.approx(expected_output[name]["values"], abs=TOLERANCE)


@pytest.mark.parametrize("case", CASES)
def test_a_batch_of_32_equals_one_at_a_time(ensemble, case):
    objectives = [ConstrainedOutputModel(ensemble, (7 * index) % TINY.neurons) for index in range(KEYS)]
    seeds = [1000 + 13 * index for index in range(KEYS)]
    batched = gradient_ascent_batch(None, objectives, CASES[case], seeds, shape=SHAPE)
    single = [gradient_ascent(None, o, CASES[case], s, shape=SHAPE) for o, s in zip(objectives, seeds, strict=True)]
    for batched_result, single_result in zip(batched, single, strict=True):
        assert_equal_results(batched_result, single_result)
    if case == "adamw-early-stopping":
        last_steps = {log["mei.objectives.EvaluationObjective"]["times"][-1] for _, _, log in single}
        assert len(last_steps) > 1, "the keys should stop at different steps"


def test_stoppers_and_objectives_that_change_call_are_called_every_step(ensemble):
    custom = config(
        stopper={"path": "mymodule.NumIterationsOrThreshold", "kwargs": {"num_iterations": 30, "threshold": 1.0}},
        objectives=[{"path": "mymodule.EveryStepEvaluation", "kwargs": {"interval": 10}}],
    )
    objectives = [ConstrainedOutputModel(ensemble, unit) for unit in range(8)]
    seeds = list(range(8))
    batched = gradient_ascent_batch(None, objectives, custom, seeds, shape=SHAPE)
    single = [gradient_ascent(None, o, custom, s, shape=SHAPE) for o, s in zip(objectives, seeds, strict=True)]
    for batched_result, single_result in zip(batched, single, strict=True):
        assert_equal_results(batched_result, single_result)
    times = [log["mymodule.EveryStepEvaluation"]["times"] for _, _, log in batched]
    assert all(steps == list(range(len(steps))) for steps in times)
    assert len({len(steps) for steps in times}) > 1, "the keys should stop at different steps"


def test_each_mei_of_a_batch_is_stored_alone(ensemble):
    objectives = [ConstrainedOutputModel(ensemble, unit) for unit in range(4)]
    for mei, _, _ in gradient_ascent_batch(None, objectives, config(), [1, 2, 3, 4], shape=SHAPE):
        assert mei.untyped_storage().nbytes() == mei.numel() * mei.element_size()


def test_keys_are_independent_of_their_batch_mates(ensemble):
    objectives = [ConstrainedOutputModel(ensemble, unit) for unit in (3, 4, 5, 6)]
    alone = gradient_ascent_batch(None, objectives[:1], config(), [42], shape=SHAPE)[0]
    together = gradient_ascent_batch(None, objectives, config(), [42, 1, 2, 3], shape=SHAPE)[0]
    assert_equal_results(together, alone)


def test_the_selected_outputs_path_equals_indexing_every_output():
    model = build_model(TINY)
    images = torch.randn(6, *TINY.input_shape)
    units = torch.tensor([[0, 5], [49, 1], [7, 7], [2, 3], [10, 20], [30, 40]])
    everything = model(images)
    expected = everything[torch.arange(6)[:, None], units]
    assert torch.allclose(model.forward_selected(images, units), expected, atol=1e-6)
    ensemble = EnsembleModel(model, build_model(TINY, seed=1))
    assert torch.allclose(selected_outputs(ensemble, images, units), ensemble(images)[torch.arange(6)[:, None], units])
    plain = torch.nn.Flatten()
    assert torch.equal(selected_outputs(plain, images, units), plain(images)[torch.arange(6)[:, None], units])


def test_models_without_the_selected_path_batch_too():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36 * 64, 10), torch.nn.Softplus())
    objectives = [ConstrainedOutputModel(model, unit) for unit in range(10)]
    seeds = list(range(10))
    batched = gradient_ascent_batch(None, objectives, config(), seeds, shape=SHAPE)
    for result, objective, seed in zip(batched, objectives, seeds, strict=True):
        assert_equal_results(result, gradient_ascent(None, objective, config(), seed, shape=SHAPE))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"transform": {"path": "mei.legacy.ops.Jitter", "kwargs": {"max_jitter": 2}}}, "batch_safe"),
        ({"optimizer": {"path": "torch.optim.Adafactor", "kwargs": {"lr": 0.01}}}, "acts on each element alone"),
    ],
)
def test_what_cannot_be_batched_exactly_runs_key_by_key(ensemble, overrides, reason, caplog):
    objectives = [ConstrainedOutputModel(ensemble, unit) for unit in (1, 2, 3)]
    method_config = config(**overrides)
    assert reason in why_not_batched("mei.methods.gradient_ascent", method_config, objectives)
    with pytest.raises(ConfigurationError, match="cannot be batched"):
        gradient_ascent_batch(None, objectives, method_config, [1, 2, 3], shape=SHAPE)
    with caplog.at_level(logging.INFO, logger="mei.batching"):
        outcomes = dict(
            generate_many(None, objectives, "mei.methods.gradient_ascent", method_config, [1, 2, 3], shape=SHAPE)
        )
    assert "one at a time" in caplog.text
    for index, objective in enumerate(objectives):
        mei, score, _ = gradient_ascent(None, objective, method_config, index + 1, shape=SHAPE)
        assert torch.equal(outcomes[index][0], mei) and outcomes[index][1] == score


def test_other_objectives_and_method_functions_run_key_by_key(ensemble):
    summed = ConstrainedOutputModel(ensemble, [1, 2], target_fn=lambda outputs: outputs.sum(dim=1))
    assert "ConstrainedOutputModel of one unit" in why_not_batched("mei.methods.gradient_ascent", config(), [summed])
    assert "not the built-in" in why_not_batched("mymodule.method", config(), [summed])
    other_model = ConstrainedOutputModel(build_ensemble(TINY, seed=5), 1)
    mixed = [ConstrainedOutputModel(ensemble, 1), other_model]
    assert "share one model" in why_not_batched("mei.methods.gradient_ascent", config(), mixed)


class OutOfMemoryAbove(torch.nn.Module):
    """Stands in for a GPU with room for ``limit`` images: a larger batch fails as CUDA would."""

    def __init__(self, model: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.model = model
        self.limit = limit
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(x)


def test_a_batch_that_runs_out_of_memory_is_split_and_nothing_is_lost(ensemble):
    limited = OutOfMemoryAbove(ensemble, limit=5)
    objectives = [ConstrainedOutputModel(limited, unit) for unit in range(16)]
    seeds = list(range(16))
    outcomes = dict(
        generate_many(None, objectives, "mei.methods.gradient_ascent", config(), seeds, shape=SHAPE, batch_size=16)
    )
    assert sorted(outcomes) == list(range(16))
    assert max(size for size in limited.batch_sizes if size <= limited.limit) == 4  # 16 -> 8 -> 4
    for index in (0, 15):
        assert_equal_results(outcomes[index], gradient_ascent(None, objectives[index], config(), index, shape=SHAPE))


def test_a_key_that_fails_in_a_batch_fails_alone(ensemble):
    objectives = [ConstrainedOutputModel(ensemble, unit) for unit in (1, 999, 2)]
    outcomes = dict(generate_many(None, objectives, "mei.methods.gradient_ascent", config(), [1, 2, 3], shape=SHAPE))
    assert isinstance(outcomes[1], IndexError)
    assert_equal_results(outcomes[2], gradient_ascent(None, objectives[2], config(), 3, shape=SHAPE))


def test_a_component_that_cannot_be_built_fails_each_key_with_its_own_error(ensemble):
    broken = config(postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norms": 3}})
    objectives = [ConstrainedOutputModel(ensemble, unit) for unit in (0, 1)]
    outcomes = dict(generate_many(None, objectives, "mei.methods.gradient_ascent", broken, [1, 2], shape=SHAPE))
    assert sorted(outcomes) == [0, 1]
    assert all(isinstance(error, ConfigurationError) and "postprocessing" in str(error) for error in outcomes.values())


def test_the_caller_config_is_not_changed(ensemble):
    short = {"stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 3}}}
    seed_config = seed_method_config(**short)
    objectives = [ConstrainedOutputModel(ensemble, unit) for unit in (0, 1)]
    outcomes = dict(generate_many(None, objectives, "mei.methods.gradient_ascent", seed_config, [8, 9], shape=SHAPE))
    assert all(isinstance(outcome, tuple) for outcome in outcomes.values())
    assert seed_config == seed_method_config(**short)


def test_batch_size_from_the_environment():
    assert configured_batch_size({}) is None
    assert configured_batch_size({"MEI_BATCH_SIZE": "auto"}) is None
    assert configured_batch_size({"MEI_BATCH_SIZE": "64"}) == 64
    with pytest.raises(ConfigurationError, match="MEI_BATCH_SIZE must be a positive integer"):
        configured_batch_size({"MEI_BATCH_SIZE": "0"})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_batch_on_cuda_equals_one_at_a_time_and_sizes_itself_from_free_memory(ensemble):
    from mei.batching import estimated_batch_size

    cuda_config = config(device="cuda")
    objectives = [ConstrainedOutputModel(ensemble, unit) for unit in range(KEYS)]
    seeds = list(range(KEYS))
    assert 32 <= estimated_batch_size(None, objectives, cuda_config, SHAPE) <= 1024
    batched = gradient_ascent_batch(None, objectives, cuda_config, seeds, shape=SHAPE)
    for index in (0, KEYS - 1):
        single = gradient_ascent(None, objectives[index], cuda_config, seeds[index], shape=SHAPE)
        assert_equal_results(batched[index], single)
