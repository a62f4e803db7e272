import math

import pytest
import torch

from mei import initial, objectives, postprocessing, preconditions, regularizers, stoppers, transforms
from mei.domain import State
from mei.errors import ConfigurationError
from mei.import_utils import build_component, import_object
from mei.legacy import ops
from mei.modules import ConstrainedOutputModel, EnsembleModel


def make_state(i_iter=0, evaluation=1.0, image=None):
    image = torch.zeros(1, 1, 2, 2) if image is None else image
    return State(i_iter, evaluation, 0.0, image, image, image, image, image)


def two_images():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 2, 10, 12, generator=generator)
    images[1] *= 10
    return images


class TestImport:
    def test_path_must_name_module_and_object(self):
        with pytest.raises(ConfigurationError, match="not an absolute path"):
            import_object("RandomNormal")

    def test_missing_module_is_named(self):
        with pytest.raises(ConfigurationError, match=r"Module in 'mei\.nonexistent\.Thing' not found"):
            import_object("mei.nonexistent.Thing")

    def test_missing_object_is_named(self):
        with pytest.raises(ConfigurationError, match=r"Object in 'mei\.initial\.Nothing' not found"):
            import_object("mei.initial.Nothing")

    def test_component_called_with_kwargs(self):
        stopper = build_component("stopper", {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 3}})
        assert isinstance(stopper, stoppers.NumIterations) and stopper.num_iterations == 3

    def test_missing_kwargs_means_none(self):
        assert isinstance(build_component("initial", {"path": "mei.initial.RandomNormal"}), initial.RandomNormal)

    def test_bad_kwargs_explain_the_component(self):
        with pytest.raises(ConfigurationError, match=r"component 'optimizer' could not be built as torch.optim.SGD"):
            build_component("optimizer", {"path": "torch.optim.SGD", "kwargs": {"learning_rate": 1}}, params=[])

    def test_spec_without_path(self):
        with pytest.raises(ConfigurationError, match="must be a mapping with a 'path'"):
            build_component("stopper", {"kwargs": {}})

    @pytest.mark.parametrize(
        "name",
        [
            "GaussianBlur",
            "ChangeNorm",
            "ClipRange",
            "ChangeStd",
            "ChangeRange",
            "Jitter",
            "DivideByMeanOfAbsolute",
            "MultiplyBy",
            "FourierSmoothing",
            "TotalVariation",
            "LpNorm",
        ],
    )
    def test_legacy_paths_resolve(self, name):
        assert import_object(f"mei.legacy.ops.{name}") is getattr(ops, name)


class TestInitial:
    def test_random_normal_is_torch_randn(self):
        torch.manual_seed(5)
        expected = torch.randn(2, 1, 4, 4)
        torch.manual_seed(5)
        assert torch.equal(initial.RandomNormal()(2, 1, 4, 4), expected)

    def test_null_channel(self):
        guess = initial.RandomNormalNullChannel(null_channel=1, null_value=0.5)(1, 3, 4, 4)
        assert torch.all(guess[:, 1] == 0.5) and not torch.all(guess[:, 0] == 0.5)


class TestStoppers:
    def test_num_iterations_stops_at_index_n(self):
        stopper = stoppers.NumIterations(3)
        assert [stopper(make_state(i))[0] for i in range(5)] == [False, False, False, True, True]

    def test_early_stopping_waits_for_patience_after_min_iter(self):
        stopper = stoppers.EarlyStopping(patience=3, min_iter=5, max_iter=100)
        decisions = [stopper(make_state(i, evaluation=1.0 if i == 0 else 0.5))[0] for i in range(8)]
        assert decisions == [False] * 5 + [True] * 3
        assert stopper(make_state(8, 0.5))[1] == 1.0

    def test_early_stopping_resets_on_improvement(self):
        stopper = stoppers.EarlyStopping(patience=2, min_iter=0, max_iter=100)
        evaluations = [1, 0, 2, 1, 3, 2, 1]
        decisions = [stopper(make_state(i, e))[0] for i, e in enumerate(evaluations)]
        assert decisions == [False, False, False, False, False, False, True]

    def test_early_stopping_stops_at_max_iter(self):
        stopper = stoppers.EarlyStopping(patience=100, min_iter=0, max_iter=4)
        assert [stopper(make_state(i, float(i)))[0] for i in range(5)] == [False] * 4 + [True]

    def test_abstract_stopper_cannot_be_built(self):
        with pytest.raises(TypeError):
            stoppers.OptimizationStopper()

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="min_iter"):
            stoppers.EarlyStopping(patience=2, min_iter=10, max_iter=5)
        with pytest.raises(ValueError, match="num_iterations"):
            stoppers.NumIterations(-1)


class TestObjectives:
    def test_regular_interval(self):
        objective = objectives.EvaluationObjective(interval=3)
        assert [objective(make_state(i, float(i))) for i in range(7)] == [0.0, None, None, 3.0, None, None, 6.0]

    @pytest.mark.parametrize("interval", [0, -1, 1.5, True])
    def test_interval_must_be_positive_int(self, interval):
        with pytest.raises(ValueError, match="interval"):
            objectives.EvaluationObjective(interval)

    def test_post_processed_input_is_a_cpu_copy(self):
        image = torch.ones(1, 1, 2, 2)
        value = objectives.PostProcessedInputObjective(1)(make_state(image=image))
        image += 1
        assert torch.equal(value, torch.ones(1, 1, 2, 2))


class TestState:
    def test_tensor_evaluation_becomes_mean_float(self):
        state = State(0, torch.tensor([1.0, 3.0]), torch.tensor(0.5), *[torch.zeros(1)] * 5)
        assert state.evaluation == 2.0 and state.evaluations == [1.0, 3.0] and state.reg_term == 0.5
        assert isinstance(state.evaluation, float)


class TestOperations:
    def test_gaussian_blur_of_an_impulse(self):
        impulse = torch.zeros(1, 1, 21, 21)
        impulse[0, 0, 10, 10] = 1
        blurred = ops.GaussianBlur(sigma=1)(impulse, 0)
        assert blurred[0, 0, 10, 10].item() == pytest.approx(0.15916, abs=1e-5)
        assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)

    def test_gaussian_blur_decays_sigma_from_iteration_one(self):
        blur = ops.GaussianBlur(sigma=2.0, decay_factor=-0.5)
        images = torch.randn(1, 1, 21, 21)
        assert torch.allclose(blur(images, 3), ops.GaussianBlur(sigma=1.0)(images, 0))

    def test_gaussian_blur_keeps_images_and_channels_apart(self):
        images = two_images()
        blurred = ops.GaussianBlur(sigma=1.5)(images, 0)
        assert torch.allclose(blurred[1:, 1:], ops.GaussianBlur(sigma=1.5)(images[1:, 1:], 0), atol=1e-6)

    def test_change_norm_per_image(self):
        normed = ops.ChangeNorm(norm=7.5)(two_images(), 0)
        assert torch.allclose(normed.flatten(1).norm(dim=1), torch.tensor([7.5, 7.5]))

    def test_pnorm_constraint_scales_only_images_over_the_norm(self):
        images = two_images()
        norms = images.flatten(1).norm(p=2, dim=1)
        limit = float(norms.mean())
        constrained = postprocessing.PNormConstraint(norm_value=limit, p=2)(images, 0)
        assert torch.equal(constrained[0], images[0])
        assert constrained[1].norm().item() == pytest.approx(limit, rel=1e-5)

    def test_pnorm_constraint_and_clip(self):
        clipped = postprocessing.PNormConstraintAndClip(norm_value=1e6, p=1, max_pixel_value=0.5)(two_images(), 0)
        assert clipped.max().item() == 0.5 and clipped.min().item() == -1.0

    def test_change_std(self):
        images = two_images() + 3
        centred = ops.ChangeStd(std=0.2)(images, 0)
        kept = ops.ChangeStd(std=0.2, zero_mean=False)(images, 0)
        assert torch.allclose(centred.flatten(1).std(dim=1), torch.tensor([0.2, 0.2]), atol=1e-5)
        assert torch.allclose(centred.flatten(1).mean(dim=1), torch.zeros(2), atol=1e-5)
        assert torch.allclose(kept.flatten(1).mean(dim=1), images.flatten(1).mean(dim=1), atol=1e-4)

    def test_clip_and_change_range(self):
        images = two_images()
        assert ops.ClipRange(-1, 1)(images, 0).abs().max().item() == 1
        ranged = ops.ChangeRange(x_min=-2, x_max=4)(images, 0)
        assert ranged.min().item() >= -2 and ranged.max().item() <= 4
        assert torch.allclose(ranged, torch.sigmoid(images) * 6 - 2)

    def test_divide_by_mean_of_absolute_per_image(self):
        divided = ops.DivideByMeanOfAbsolute()(two_images(), 0)
        assert torch.allclose(divided.abs().flatten(1).mean(dim=1), torch.ones(2))

    def test_multiply_by_decays(self):
        assert ops.MultiplyBy(const=3.0, decay_factor=-0.5)(torch.ones(1), 5).item() == 1.0

    def test_fourier_smoothing_keeps_constant_and_removes_the_highest_frequency(self):
        constant = torch.full((1, 1, 8, 8), 2.0)
        assert torch.allclose(ops.FourierSmoothing(0.5)(constant, 0), constant)
        checkerboard = (torch.arange(8).view(-1, 1) + torch.arange(8).view(1, -1)) % 2 * 2.0 - 1
        smoothed = ops.FourierSmoothing(0.5)(checkerboard.view(1, 1, 8, 8), 0)
        assert smoothed.abs().max().item() < 1e-5

    def test_jitter_is_a_reproducible_reflected_shift(self):
        images = two_images()
        torch.manual_seed(0)
        first = ops.Jitter(max_jitter=2)(images, 0)
        torch.manual_seed(0)
        assert torch.equal(ops.Jitter(max_jitter=2)(images, 0), first)
        assert not transforms.Jitter.batch_safe
        assert torch.equal(ops.Jitter(max_jitter=0)(images, 0), images)

    def test_total_variation_uses_next_row_and_column(self):
        ramp = torch.arange(4.0).view(1, 1, 4, 1).expand(1, 1, 4, 3)
        assert regularizers.TotalVariation(weight=2.0)(ramp, 0).tolist() == [2.0 * 3 * 3]
        variations = regularizers.TotalVariation(isotropic=True)(torch.cat([ramp, 2 * ramp]), 0)
        assert variations.tolist() == pytest.approx([3 * 2, 6 * 2], rel=1e-5)

    def test_lp_norm_per_image(self):
        images = two_images()
        values = regularizers.LpNorm(weight=0.5, p=6)(images, 0)
        assert values.shape == (2,)
        assert values[1].item() == pytest.approx(0.5 * images[1].flatten().norm(p=6).item(), rel=1e-5)

    def test_built_in_operations_declare_batch_safety(self):
        for module in (preconditions, postprocessing, regularizers):
            for value in vars(module).values():
                if isinstance(value, type) and value.__module__ == module.__name__:
                    assert value.batch_safe, value


class TestModules:
    def test_constrained_output_selects_one_unit_as_a_column(self):
        model = ConstrainedOutputModel(torch.nn.Identity(), 2)
        assert model(torch.arange(10.0).view(2, 5)).tolist() == [[2.0], [7.0]]

    def test_constrained_output_with_list_target_fn_and_forward_kwargs(self):
        class Scaled(torch.nn.Module):
            def forward(self, x, scale=1.0):
                return x * scale

        model = ConstrainedOutputModel(Scaled(), [0, 1], target_fn=lambda t: t.sum(dim=1), forward_kwargs={"scale": 2})
        assert model(torch.ones(1, 3)).tolist() == [4.0]
        assert model(torch.ones(1, 3), scale=3).tolist() == [6.0]

    def test_ensemble_averages_members(self):
        members = [torch.nn.Linear(2, 1) for _ in range(3)]
        x = torch.randn(4, 2)
        expected = sum(member(x) for member in members) / 3
        assert torch.allclose(EnsembleModel(*members)(x), expected)
        with pytest.raises(ValueError, match="at least one"):
            EnsembleModel()


def test_gaussian_window_matches_the_closed_form():
    window = preconditions._gaussian_window(1.0, 4, torch.device("cpu"), torch.float64)
    assert window[4].item() == pytest.approx(1 / sum(math.exp(-0.5 * k * k) for k in range(-4, 5)))
