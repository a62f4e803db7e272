"""During generation the model runs with batch norms folded and, on the CPU, the im2col kernel for convolutions
of few input channels: the same function, undone afterwards, and skipped where it would change the model."""

import logging

import pytest
import torch
from conftest import seed_method_config
from torch import nn

from bench.reference_style import reference_objective, reference_style_ascent
from bench.sensorium import TINY, build_ensemble, build_model
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel
from mei.preparation import Im2colConv2d, Probe, generation_mode

CPU = torch.device("cpu")
SHAPE = (1, *TINY.input_shape)
SMALL_SHAPE = (1, 1, 12, 16)
AS_THEY_ARE = "generating with the model's layers as they are"


def config(steps: int = 12) -> dict:
    return seed_method_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": steps}},
        precondition={"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
        postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 25}},
    )


def output_and_input_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    output = model(x)
    (gradient,) = torch.autograd.grad(output.sum(), x)
    return output.detach(), gradient


def assert_same_function(model: nn.Module, x: torch.Tensor, expected: tuple[torch.Tensor, torch.Tensor]) -> None:
    for found, wanted in zip(output_and_input_gradient(model, x), expected, strict=True):
        assert torch.allclose(found, wanted, atol=1e-5, rtol=0)


def with_statistics(norm: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """A batch norm far from the identity, so that folding it wrongly shows."""
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(3, 5)
    return norm.eval()


def layer_kinds(model: nn.Module) -> list[type]:
    return [type(module) for module in model.modules()]


def test_the_model_is_rewritten_during_generation_and_restored_after():
    model = build_model(TINY).train()
    model.core[1].eval()  # a frozen batch norm in a model being trained
    model.readout.bias.requires_grad_(False)
    modules, modes = list(model.modules()), [module.training for module in model.modules()]
    flags = [parameter.requires_grad for parameter in model.parameters()]
    x = torch.randn(3, *SHAPE[1:])
    expected = output_and_input_gradient(model.eval(), x)
    model.train()
    model.core[1].eval()
    with generation_mode(model, CPU):
        assert nn.BatchNorm2d not in layer_kinds(model) and Im2colConv2d in layer_kinds(model)
        assert_same_function(model, x, expected)
    assert list(model.modules()) == modules
    assert [module.training for module in model.modules()] == modes
    assert [parameter.requires_grad for parameter in model.parameters()] == flags


def test_the_model_is_restored_when_generation_fails():
    model = build_model(TINY)
    modules = list(model.modules())
    with pytest.raises(RuntimeError, match="boom"), generation_mode(model, CPU):
        raise RuntimeError("boom")
    assert list(model.modules()) == modules


def test_an_interruption_during_the_probe_goes_through_and_the_model_is_restored():
    class TimeLimit(Exception):
        """Like Celery's soft time limit: an exception that is no fault of the model."""

    def interrupted(images):
        raise TimeLimit

    model = build_model(TINY)
    modules = list(model.modules())
    with pytest.raises(TimeLimit), generation_mode(model, CPU, Probe(interrupted, torch.zeros(1, *SHAPE[1:]))):
        pass
    assert list(model.modules()) == modules


def test_generation_modes_nest():
    model = build_model(TINY)
    x = torch.randn(2, *SHAPE[1:])
    expected = output_and_input_gradient(model.eval(), x)
    with generation_mode(model, CPU), generation_mode(model, CPU):
        assert layer_kinds(model).count(Im2colConv2d) == 1
        assert_same_function(model, x, expected)


@pytest.mark.parametrize("in_channels", [1, 2, 4])
@pytest.mark.parametrize("geometry", [{}, {"stride": 2, "padding": 3}, {"stride": (1, 2), "bias": False}])
def test_the_im2col_kernel_computes_the_convolution_with_its_parameters(in_channels, geometry):
    conv = nn.Conv2d(in_channels, 16, 7, **geometry).requires_grad_(False)
    x = torch.randn(5, in_channels, 20, 24)
    replacement = Im2colConv2d.sharing(conv)
    assert replacement.weight is conv.weight and replacement.bias is conv.bias
    assert_same_function(replacement, x, output_and_input_gradient(conv, x))
    assert_same_function(replacement, x[0], output_and_input_gradient(conv, x[0]))  # an unbatched image


def test_only_plain_layers_without_hooks_are_rewritten():
    class ScaledConv(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    hooked = nn.Conv2d(1, 4, 3)
    hooked.register_forward_hook(lambda module, inputs, output: output)
    backward_hooked = nn.Conv2d(1, 4, 3)
    backward_hooked.register_full_backward_pre_hook(lambda module, grad_output: None)
    model = nn.Sequential(
        ScaledConv(1, 4, 3), with_statistics(nn.BatchNorm2d(4)), hooked, with_statistics(nn.BatchNorm2d(4))
    )
    with generation_mode(model, CPU):
        assert [type(layer) for layer in model] == [ScaledConv, nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm2d]
    for unchanged in (backward_hooked, nn.Conv2d(8, 4, 3), nn.Conv2d(1, 4, 3, dilation=2)):
        with generation_mode(nn.Sequential(unchanged), CPU) as prepared:
            assert prepared[0] is unchanged


def test_batch_norms_without_affine_parameters_fold_and_without_statistics_stay():
    x = torch.randn(2, 8, 10, 10)
    folded = nn.Sequential(nn.Conv2d(8, 8, 3), with_statistics(nn.BatchNorm2d(8, affine=False)))
    kept = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))
    expected = output_and_input_gradient(folded.eval(), x)
    with generation_mode(folded, CPU), generation_mode(kept, CPU):
        assert type(folded[1]) is nn.Identity and type(kept[1]) is nn.BatchNorm2d
        assert_same_function(folded, x, expected)


def test_a_batch_norm_after_a_nested_sequential_is_folded_into_its_last_convolution():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3)), with_statistics(nn.BatchNorm2d(8)))
    x = torch.randn(2, 8, 10, 10)
    expected = output_and_input_gradient(model.eval(), x)
    with generation_mode(model, CPU):
        assert type(model[1]) is nn.Identity
        assert_same_function(model, x, expected)


def test_layers_seen_twice_or_containers_used_twice_are_not_folded_across():
    activation = nn.ELU()
    repeated = nn.Sequential(nn.Conv2d(8, 8, 1), activation, nn.Conv2d(8, 8, 1), activation, nn.BatchNorm2d(8))
    shared = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1))
    twice = nn.Sequential(shared, with_statistics(nn.BatchNorm2d(8)), shared)
    x = torch.randn(2, 8, 10, 10)
    expected = [output_and_input_gradient(model.eval(), x) for model in (repeated, twice)]
    with generation_mode(repeated, CPU), generation_mode(twice, CPU):
        assert nn.Identity not in layer_kinds(repeated) + layer_kinds(twice)
        for model, wanted in zip((repeated, twice), expected, strict=True):
            assert_same_function(model, x, wanted)


class OutOfOrder(nn.Module):
    """Calls the layers of its ``nn.Sequential`` one by one with an addition between them: folding the batch
    norm into the convolution would change what it computes."""

    def __init__(self, norm_class: type[nn.BatchNorm2d] = nn.BatchNorm2d, conv_class: type[nn.Conv2d] = nn.Conv2d):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.layers = nn.Sequential(conv_class(1, 4, 3), with_statistics(norm_class(4)))

    def forward(self, x):
        conv, norm = self.layers
        return norm(conv(x) + 1.0).mean(dim=(1, 2, 3))


class ReachesIn(OutOfOrder):
    """Reads the batch norm's statistics in its forward: with the batch norm replaced it fails."""

    def forward(self, x):
        conv, norm = self.layers
        return (norm(conv(x)) * norm.running_var.mean()).mean(dim=(1, 2, 3))


class KeptNorm(nn.BatchNorm2d):
    pass


class KeptConv(nn.Conv2d):
    pass


@pytest.mark.parametrize("model_class", [OutOfOrder, ReachesIn])
def test_rewrites_that_change_or_break_the_model_are_dropped(caplog, model_class):
    model = model_class()
    modules = list(model.modules())
    with caplog.at_level(logging.WARNING, logger="mei.preparation"):
        mei, score, output = gradient_ascent(None, model, config(), seed=3, shape=SMALL_SHAPE)
    assert AS_THEY_ARE in caplog.text
    # The same model with layer classes that are never rewritten gives the very same MEI.
    unprepared = gradient_ascent(None, model_class(KeptNorm, KeptConv), config(), seed=3, shape=SMALL_SHAPE)
    assert torch.equal(mei, unprepared[0]) and score == unprepared[1] and output == unprepared[2]
    assert list(model.modules()) == modules


def test_the_probe_leaves_the_random_numbers_as_they_were():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Conv2d(1, 4, 3), with_statistics(nn.BatchNorm2d(4)))

        def forward(self, x):
            return (self.layers(x) + 1e-3 * torch.randn(())).mean(dim=(1, 2, 3))

    model, images = Noisy(), torch.randn(2, *SMALL_SHAPE[1:])
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with generation_mode(model, CPU, Probe(model, images)):
        assert torch.equal(torch.rand(3), expected)


def test_the_probe_compares_in_full_precision_and_leaves_the_users_precision_as_it_was():
    backends = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [backend.fp32_precision for backend in backends]
    model = nn.Sequential(nn.Conv2d(1, 4, 3), with_statistics(nn.BatchNorm2d(4)))
    seen = []

    def objective(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(backend.fp32_precision for backend in backends))
        return model(images).mean(dim=(1, 2, 3))

    try:
        for backend in backends:
            backend.fp32_precision = "tf32"
        with generation_mode(model, CPU, Probe(objective, torch.randn(2, *SMALL_SHAPE[1:]))):
            assert [backend.fp32_precision for backend in backends] == ["tf32", "tf32"]
        assert seen and set(seen) == {("ieee", "ieee")}
        assert [backend.fp32_precision for backend in backends] == ["tf32", "tf32"]
    finally:
        for backend, precision in zip(backends, saved, strict=True):
            backend.fp32_precision = precision


def test_the_mei_of_the_prepared_model_equals_the_unprepared_one_within_rounding():
    ensemble = build_ensemble(TINY)
    prepared = gradient_ascent(None, ConstrainedOutputModel(ensemble, 7), config(), seed=5, shape=SHAPE)
    unprepared = reference_style_ascent(reference_objective(ensemble, 7), config(), 5, SHAPE)
    assert torch.allclose(prepared[0], unprepared[0], atol=1e-4, rtol=0)
    assert prepared[1] == pytest.approx(unprepared[1], rel=1e-5)
