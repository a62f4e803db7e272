import copy
import itertools
from collections import namedtuple
from typing import ClassVar

import pytest
import torch
from conftest import Quadratic, seed_method_config
from torch.utils.data import DataLoader, TensorDataset

from mei.domain import Rows, State
from mei.errors import ConfigurationError, GradientError
from mei.import_utils import import_object
from mei.methods import gradient_ascent, input_shape

SHAPE = (1, 1, 12, 16)


def run(model, config, seed=0, shape=SHAPE):
    return gradient_ascent(None, model, config, seed, shape=shape)


def converging(num_iterations=300, **overrides):
    return seed_method_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": num_iterations}}, **overrides
    )


class Recorder:
    """A stopper that keeps every state it is shown and stops after ``steps`` steps."""

    instances: ClassVar[list["Recorder"]] = []

    def __init__(self, steps):
        self.steps = steps
        self.states: list[State] = []
        Recorder.instances.append(self)

    def __call__(self, state):
        self.states.append(state)
        return len(self.states) >= self.steps, len(self.states)


def recording(steps, **overrides):
    Recorder.instances.clear()
    config = seed_method_config(stopper={"path": f"{__name__}.Recorder", "kwargs": {"steps": steps}}, **overrides)
    return config


class TestConvergence:
    def test_quadratic_model_converges_to_its_target(self, target):
        mei, score, _ = run(Quadratic(target), converging())
        assert torch.allclose(mei, target, atol=1e-4)
        assert score == pytest.approx(0.0, abs=1e-6)

    def test_with_a_transform(self, target):
        config = converging(600, transform={"path": "mei.legacy.ops.ChangeRange", "kwargs": {"x_min": -4, "x_max": 4}})
        mei, _, _ = run(Quadratic(target), config)
        assert torch.allclose(torch.sigmoid(mei) * 8 - 4, target, atol=1e-3)

    def test_with_a_regularization(self, target):
        weight = 0.5
        config = converging(regularization={"path": "mei.legacy.ops.LpNorm", "kwargs": {"weight": weight, "p": 2}})
        mei, _, _ = run(Quadratic(target), config)
        optimum = target * (1 - weight / (2 * target.norm()))
        assert torch.allclose(mei, optimum, atol=1e-4)

    def test_with_a_precondition(self, target):
        config = converging(precondition={"path": "mei.legacy.ops.MultiplyBy", "kwargs": {"const": 0.5}})
        mei, _, _ = run(Quadratic(target), config)
        assert torch.allclose(mei, target, atol=1e-3)

    def test_with_a_postprocessing(self, target):
        config = converging(postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 2.0}})
        mei, _, _ = run(Quadratic(target), config)
        assert torch.allclose(mei, 2.0 * target / target.norm(), atol=1e-4)

    def test_inhibitory_minimises(self, target):
        config = converging(
            100, inhibitory=True, postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 2.0}}
        )
        mei, score, _ = run(Quadratic(target), config)
        assert torch.allclose(mei, -2.0 * target / target.norm(), atol=1e-4)
        assert score == pytest.approx(((target - mei) ** 2).sum().item(), rel=1e-4)  # the negated evaluation


class TestStepSemantics:
    def test_num_iterations_runs_n_plus_one_steps_and_logs_by_path(self, target):
        _, _, output = run(Quadratic(target), converging(25))
        log = output["mei.objectives.EvaluationObjective"]
        assert log["times"] == [0, 10, 20]
        assert len(log["values"]) == 3 and all(isinstance(v, float) for v in log["values"])

    def test_state_chain_and_score(self, target):
        config = recording(
            4,
            postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 3.0}},
            precondition={"path": "mei.legacy.ops.MultiplyBy", "kwargs": {"const": 2.0}},
        )
        model = Quadratic(target)
        mei, score, _ = run(model, config)
        states = Recorder.instances[0].states
        assert [s.i_iter for s in states] == [0, 1, 2, 3]
        for previous, current in itertools.pairwise(states):
            assert torch.equal(current.input_, previous.post_processed_input)
        for state in states:
            assert torch.equal(state.transformed_input, state.input_)
            assert torch.allclose(state.preconditioned_grad, 2 * state.grad)
            assert state.evaluation == pytest.approx(model(state.input_).item(), rel=1e-6)
            assert state.reg_term == 0.0
            assert state.post_processed_input.norm().item() == pytest.approx(3.0, rel=1e-5)
        assert [s.stopper_output for s in states] == [1, 2, 3, 4]
        assert torch.equal(mei, states[-1].post_processed_input)
        assert score == states[-1].evaluation

    def test_gradient_is_of_the_loss(self, target):
        config = recording(1)
        run(Quadratic(target), config)
        state = Recorder.instances[0].states[0]
        assert torch.allclose(state.grad, -2 * (target - state.input_), atol=1e-6)

    def test_values_stay_on_the_device_until_read(self, target):
        run(Quadratic(target), recording(3, objectives=[]))
        states = Recorder.instances[0].states
        # The last state gives the score; the others were never read, so never copied to the host.
        assert all(isinstance(state._evaluation, Rows) for state in states[:-1])

    def test_initial_guess_is_drawn_on_the_cpu_from_the_seed(self, target):
        run(Quadratic(target), recording(1), seed=11)
        torch.manual_seed(11)
        assert torch.equal(Recorder.instances[0].states[0].input_, torch.randn(SHAPE))

    def test_config_is_not_mutated(self, target):
        config = seed_method_config(
            postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 2.0}},
            precondition={"path": "mei.legacy.ops.GaussianBlur"} | {"kwargs": {"sigma": 1}},
            stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 3}},
        )
        config["initial"] = {"path": "mei.initial.RandomNormal"}
        before = copy.deepcopy(config)
        run(Quadratic(target), config)
        assert config == before

    def test_model_parameters_frozen_during_and_restored_after(self, target):
        model = Quadratic(target)
        model.train()
        flags = []
        forward = model.forward

        def spying(x):
            flags.append((model.target.requires_grad, model.training))
            return forward(x)

        model.forward = spying
        run(model, converging(2))
        assert flags == [(False, False)] * 3
        assert model.target.requires_grad and model.training and model.target.grad is None

    def test_model_forward_kwargs_reach_the_model(self):
        class Keyed(torch.nn.Module):
            def forward(self, x, data_key=None):
                assert data_key == "session-3"
                return -(x**2).sum().view(1)

        run(Keyed(), converging(2, model_forward_kwargs={"data_key": "session-3"}))


class TestReproducibility:
    def test_same_seed_same_result_bitwise(self, target):
        config = converging(30, precondition={"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}})
        first = run(Quadratic(target), config, seed=3)
        second = run(Quadratic(target), config, seed=3)
        assert torch.equal(first[0], second[0]) and first[1] == second[1] and first[2] == second[2]
        assert not torch.equal(run(Quadratic(target), config, seed=4)[0], first[0])

    def test_images_of_one_key_are_independent(self, target):
        total = 3
        config = converging(
            40,
            n_meis=total,
            precondition={"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
            postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 2.0}},
            regularization={"path": "mei.legacy.ops.TotalVariation", "kwargs": {"weight": 0.01}},
        )
        together, score, _ = run(Quadratic(target), config, seed=5)
        assert together.shape == (total, *SHAPE[1:])
        alone = []
        for index in range(total):
            single = dict(config, n_meis=1)
            single["initial"] = {"path": "mymodule.NthOfRandomNormal", "kwargs": {"index": index, "total": total}}
            mei, single_score, _ = run(Quadratic(target), single, seed=5)
            alone.append((mei, single_score))
        assert torch.allclose(together, torch.cat([mei for mei, _ in alone]), atol=1e-6)
        assert score == pytest.approx(sum(s for _, s in alone) / total, rel=1e-5)


class TestUserComponents:
    def test_seed_custom_stopper_example(self, target):
        config = seed_method_config(stopper={"path": "mymodule.EvaluationThreshold", "kwargs": {"threshold": -1.0}})
        _, score, output = run(Quadratic(target), config)
        assert score >= -1.0
        assert len(output["mei.objectives.EvaluationObjective"]["times"]) < 100

    def test_custom_method_function_contract(self, target):
        method = import_object("mymodule.method")
        mei, score, output = method({}, Quadratic(torch.zeros(1, 1, 4, 4)), {"value": 0.5}, 42)
        assert mei.shape == (1, 1, 4, 4) and score == pytest.approx(-4.0) and output == {"value": 0.5}

    def test_plain_module_without_forward_kwargs(self):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12 * 16, 1))
        mei, score, _ = run(model, converging(5))
        assert mei.shape == SHAPE and isinstance(score, float)


class TestShapeInference:
    def test_from_a_dataloader_of_tuples(self):
        loader = DataLoader(TensorDataset(torch.zeros(8, 2, 9, 11), torch.zeros(8, 5)), batch_size=4)
        assert input_shape({"train": {"session-1": loader}}) == (4, 2, 9, 11)

    def test_from_named_batches(self):
        Batch = namedtuple("Batch", ["targets", "images"])
        assert input_shape({"train": {"a": [Batch(torch.zeros(3), torch.zeros(3, 1, 5, 5))]}}) == (3, 1, 5, 5)
        assert input_shape({"train": {"a": [{"responses": 1, "inputs": torch.zeros(2, 1, 4, 4)}]}}) == (2, 1, 4, 4)

    def test_generation_uses_the_dataloader_shape_with_n_meis(self, target):
        loader = DataLoader(TensorDataset(torch.zeros(8, *SHAPE[1:])), batch_size=8)
        mei, _, _ = gradient_ascent({"train": {"a": loader}}, Quadratic(target), converging(2, n_meis=2), 0)
        assert mei.shape == (2, *SHAPE[1:])


class TestErrors:
    def test_no_shape(self, target):
        with pytest.raises(ConfigurationError, match="cannot infer the input shape"):
            gradient_ascent({}, Quadratic(target), converging(2), 0)

    def test_unknown_path(self, target):
        with pytest.raises(ConfigurationError, match=r"Module in 'mei\.nothing\.Here' not found"):
            run(Quadratic(target), converging(2, initial={"path": "mei.nothing.Here"}))

    def test_component_with_wrong_kwargs(self, target):
        config = converging(2)
        config["optimizer"]["kwargs"] = {"rate": 0.1}
        with pytest.raises(ConfigurationError, match="component 'optimizer' could not be built"):
            run(Quadratic(target), config)

    def test_unknown_top_level_key(self, target):
        with pytest.raises(ConfigurationError, match=r"unknown keys \['postprocesing'\]"):
            run(Quadratic(target), converging(2, postprocesing={"path": "mei.legacy.ops.ChangeNorm"}))

    def test_missing_required_key(self, target):
        config = converging(2)
        del config["stopper"]
        with pytest.raises(ConfigurationError, match=r"lacks the required keys \['stopper'\]"):
            run(Quadratic(target), config)

    def test_output_without_gradient_to_the_input(self, target):
        class Constant(torch.nn.Module):
            def forward(self, x):
                return torch.ones(1)

        with pytest.raises(GradientError, match="Gradient did not reach MEI"):
            run(Constant(), converging(2))

    def test_detached_output(self, target):
        class Detaching(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.ones(()))

            def forward(self, x):
                return (x.detach().sum() * self.weight).view(1)

        with pytest.raises(GradientError):
            run(Detaching(), converging(2))

    def test_output_with_several_values_per_image(self):
        with pytest.raises(ValueError, match=r"must return one value per image"):
            run(torch.nn.Flatten(), converging(2))

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
    def test_cuda_without_a_gpu(self, target):
        with pytest.raises(ConfigurationError, match="no CUDA device is available"):
            run(Quadratic(target), converging(2, device="cuda"))

    def test_bad_device(self, target):
        with pytest.raises(ConfigurationError, match="device must be 'cpu' or 'cuda'"):
            run(Quadratic(target), converging(2, device="gpu"))

    def test_bad_n_meis(self, target):
        with pytest.raises(ConfigurationError, match="n_meis"):
            run(Quadratic(target), converging(2, n_meis=0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    def test_cuda_matches_cpu(self, target):
        config = converging(50, precondition={"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}})
        cpu_mei, cpu_score, _ = run(Quadratic(target), config, seed=2)
        cuda_mei, cuda_score, _ = run(Quadratic(target), dict(config, device="cuda"), seed=2)
        assert cuda_mei.device.type == "cpu"
        assert torch.allclose(cpu_mei, cuda_mei, atol=1e-4)
        assert cuda_score == pytest.approx(cpu_score, rel=1e-4, abs=1e-5)

    def test_same_seed_same_initial_guess_on_cuda(self, target):
        run(Quadratic(target), recording(1, device="cuda"), seed=11)
        torch.manual_seed(11)
        assert torch.equal(Recorder.instances[0].states[0].input_.cpu(), torch.randn(SHAPE))


def test_an_observer_sees_every_state_without_forcing_reads(target):
    from mei.progress import observing

    seen = []
    with observing(seen.append):
        run(Quadratic(target), converging(4, objectives=[]))
    assert [state.i_iter for state in seen] == [0, 1, 2, 3, 4]
    assert isinstance(seen[0]._evaluation, Rows)
    run(Quadratic(target), converging(2))
    assert len(seen) == 5
