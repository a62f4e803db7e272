"""Video MEIs: 5-D inputs end to end, against neurons with known spatiotemporal filters."""

import pytest
import torch

from mei import preconditions, transforms
from mei.batching import gradient_ascent_batch
from mei.legacy import ops
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel
from mei.synthetic import VideoLinearNonlinearPopulation, video_filters

FRAMES, DEPTH = 8, 6  # frames of the video; of the filters: the model answers at 8 - 6 + 1 = 3 time steps
SHAPE = (1, 2, FRAMES, 16, 16)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def video_config(precondition: dict, iterations: int = 150) -> dict:
    return {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": iterations}},
        "precondition": precondition,
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 5.0}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
        "device": "cpu",
    }


@pytest.mark.parametrize(
    ("separable", "precondition"),
    [
        (True, {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 0.5}}),
        (False, {"path": "mei.preconditions.TemporalLowPass", "kwargs": {"sigma": 0.3}}),
    ],
)
def test_video_meis_of_linear_nonlinear_neurons_correlate_with_their_filters(separable, precondition):
    filters = video_filters(3, 2, DEPTH, 16, 16, separable=separable, seed=2)
    population = VideoLinearNonlinearPopulation(filters)
    correlations = []
    for unit in range(len(filters)):
        # The response at the last time step sees the last DEPTH frames.
        objective = ConstrainedOutputModel(population, unit, time_window=(-1, None))
        mei, score, output = gradient_ascent(None, objective, video_config(precondition), seed=unit, shape=SHAPE)
        assert mei.shape == (1, *SHAPE[1:])
        assert score == output["mei.objectives.EvaluationObjective"]["values"][-1]
        correlations.append(correlation(mei[0, :, -DEPTH:], filters[unit]))
    assert min(correlations) > 0.9, correlations


def test_video_batches_equal_one_at_a_time():
    filters = video_filters(4, 2, DEPTH, 16, 16, separable=False, seed=3)
    population = VideoLinearNonlinearPopulation(filters)
    config = video_config({"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1.0}}, iterations=10)
    config["transform"] = {"path": "mei.legacy.ops.ChangeRange", "kwargs": {"x_min": -2, "x_max": 2}}
    objectives = [ConstrainedOutputModel(population, unit, time_window=(1, None)) for unit in range(4)]
    seeds = [5, 6, 7, 8]
    batched = gradient_ascent_batch(None, objectives, config, seeds, shape=SHAPE)
    for objective, seed, (mei, score, output) in zip(objectives, seeds, batched, strict=True):
        alone = gradient_ascent(None, objective, config, seed, shape=SHAPE)
        assert torch.allclose(mei, alone[0], atol=1e-5)
        assert score == pytest.approx(alone[1], abs=1e-5)
        assert (
            output["mei.objectives.EvaluationObjective"]["times"]
            == alone[2]["mei.objectives.EvaluationObjective"]["times"]
        )


def test_spatial_operations_act_on_each_frame_and_the_temporal_filter_on_time():
    video = torch.randn(2, 2, 5, 12, 12)
    frames = video.movedim(2, 1).reshape(10, 2, 12, 12)  # each frame an image

    def per_frame(operation):
        return operation(frames, 3).reshape(2, 5, 2, 12, 12).movedim(1, 2)

    blur = ops.GaussianBlur(sigma=1.0)
    assert torch.allclose(blur(video, 3), per_frame(blur), atol=1e-6)
    smoothing = ops.FourierSmoothing(freq_exp=2)
    assert torch.allclose(smoothing(video, 3), per_frame(smoothing), atol=1e-5)
    torch.manual_seed(0)
    jittered = transforms.Jitter(max_jitter=2)(video, 0)
    torch.manual_seed(0)
    assert torch.equal(jittered, per_frame(lambda x, i: transforms.Jitter(max_jitter=2)(x, 0)))

    low_pass = preconditions.TemporalLowPass(sigma=1.0)
    constant_in_time = torch.randn(2, 2, 1, 12, 12).expand(-1, -1, 7, -1, -1)
    assert torch.allclose(low_pass(constant_in_time, 0), constant_in_time, atol=1e-6)
    flicker = torch.tensor([1.0, -1.0] * 4).view(1, 1, 8, 1, 1)
    assert low_pass(flicker, 0)[0, 0, 2:-2].abs().max() < 0.1 * flicker.abs().max()


def test_components_and_objectives_say_which_inputs_they_take():
    with pytest.raises(ValueError, match=r"TemporalLowPass smooths videos .* got a tensor of shape \(1, 1, 8, 8\)"):
        preconditions.TemporalLowPass(sigma=1.0)(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match=r"takes images .* or videos .* got a tensor of shape \(1, 8, 8\)"):
        ops.GaussianBlur(sigma=1.0)(torch.zeros(1, 8, 8), 0)
    population = VideoLinearNonlinearPopulation(video_filters(2, 1, 3, 8, 8, separable=True))
    with pytest.raises(ValueError, match="give the objective time_window"):
        ConstrainedOutputModel(population, 0)(torch.zeros(1, 1, 4, 8, 8))
    image_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(ValueError, match="needs a video model's"):
        ConstrainedOutputModel(image_model, 0, time_window=(-1, None))(torch.zeros(1, 1, 8, 8))
