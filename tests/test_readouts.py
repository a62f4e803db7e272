"""Selected-neuron evaluation of the lab library's readouts, on neuralpredictors' own modules."""

import logging

import pytest
import torch
from torch import nn

from bench.lab_model import build_encoder, import_neuralpredictors
from bench.reference_style import FullReadout
from bench.step_time import method_config
from mei import readouts
from mei.batching import generate_many
from mei.library import library_class
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel, EnsembleModel
from mei.preparation import generation_mode

SHAPE = (1, 1, 36, 64)
NEURONS = {"scan-a": 12, "scan-b": 7}
READOUTS = ["FullGaussian2d", "Gaussian2d", "PointPooled2d", "FullFactorized2d", "SpatialXFeatureLinear"]
KEYS = [("scan-a", 0), ("scan-b", 6), ("scan-a", 1), ("scan-a", 2), ("scan-b", 0), ("scan-a", 11)]
SELECTED = "evaluating every neuron of the model's readouts"


def small_encoder(readout: str = "FullGaussian2d", seed: int = 0, layers: int = 2, **arguments) -> nn.Module:
    model = build_encoder(NEURONS, seed, readout, hidden_channels=8, layers=layers, **arguments)
    _neurons_at_the_edges(model)
    return model


def _neurons_at_the_edges(model: nn.Module) -> None:
    """The first neurons of each data key sit on the corners of the feature map, one beyond it (clamped)."""
    for readout in model.readout.values():
        positions = getattr(readout, "_mu", None)
        if positions is None:
            positions = getattr(readout, "mu", None)
        if positions is None:
            positions = getattr(readout, "grid", None)
        if isinstance(positions, nn.Parameter):
            positions.data[0, :3, 0] = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.3, -0.2]])


def objective(model: nn.Module, data_key: str, unit: int, **kwargs) -> ConstrainedOutputModel:
    return ConstrainedOutputModel(model, unit, forward_kwargs={"data_key": data_key, **kwargs})


def assert_same(found, expected, tolerance=1e-5):
    assert torch.allclose(found[0], expected[0], atol=tolerance, rtol=0)
    assert found[1] == pytest.approx(expected[1], abs=tolerance)
    for name, log in expected[2].items():
        assert found[2][name]["times"] == log["times"]
        assert found[2][name]["values"] == pytest.approx(log["values"], abs=tolerance)


class Counting:
    """Counts the calls of the library's full readout and of the framework's selected path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, readout_class: type) -> None:
        self.full = self.selected = 0
        full_forward = readout_class.forward
        kind = library_class(object.__new__(readout_class), readouts.SELECTORS).__name__
        selector = readouts.SELECTORS[kind]

        def counted_full(module, *args, **kwargs):
            self.full += 1
            return full_forward(module, *args, **kwargs)

        def counted_selector(*args):
            self.selected += 1
            return selector(*args)

        # Patched on the defining class, so that the readout's forward is still that class's own.
        defining = next(cls for cls in readout_class.__mro__ if "forward" in vars(cls))
        monkeypatch.setattr(defining, "forward", counted_full)
        monkeypatch.setitem(readouts.SELECTORS, kind, counted_selector)


@pytest.mark.parametrize("readout", READOUTS)
def test_batches_of_several_data_keys_equal_the_full_readout_one_at_a_time(readout, monkeypatch):
    library = import_neuralpredictors()
    ensemble = EnsembleModel(small_encoder(readout, seed=0), small_encoder(readout, seed=1))
    config = method_config("cpu", 6)
    objectives = [objective(ensemble, data_key, unit) for data_key, unit in KEYS]
    seeds = list(range(len(KEYS)))
    counting = Counting(monkeypatch, getattr(library.layers.readouts, readout))
    outcomes = dict(generate_many(None, objectives, "mei.methods.gradient_ascent", config, seeds, shape=SHAPE))
    # Two sub-batches, one per data key; each step evaluates each member's readout at the selected neurons.
    assert counting.selected >= 2 * 2 * 6
    assert counting.full <= 2 * 2 * 2, "the full readout runs only in the probe of the rewrites"
    for index, (data_key, unit) in enumerate(KEYS):
        reference = objective(FullReadout(ensemble), data_key, unit)
        assert_same(outcomes[index], gradient_ascent(None, reference, config, seeds[index], shape=SHAPE))


def test_one_at_a_time_selects_too_and_a_shifter_moves_the_selected_neurons(monkeypatch):
    library = import_neuralpredictors()
    from neuralpredictors.layers.shifters import MLPShifter

    shifter = MLPShifter(list(NEURONS), hidden_channels_shifter=3)
    model = small_encoder(shifter=shifter)
    with torch.no_grad():
        for parameter in shifter.parameters():
            parameter.normal_(0, 0.5)
    pupil_center = torch.tensor([[0.4, -0.7]])
    config = method_config("cpu", 5)
    counting = Counting(monkeypatch, library.layers.readouts.FullGaussian2d)
    found = gradient_ascent(None, objective(model, "scan-b", 3, pupil_center=pupil_center), config, 3, shape=SHAPE)
    assert counting.selected >= 5
    reference = objective(FullReadout(model), "scan-b", 3, pupil_center=pupil_center)
    expected = gradient_ascent(None, reference, config, 3, shape=SHAPE)
    assert_same(found, expected)
    unshifted = objective(FullReadout(model), "scan-b", 3, pupil_center=torch.zeros(1, 2))
    assert not torch.allclose(found[0], gradient_ascent(None, unshifted, config, 3, shape=SHAPE)[0])


class Gain(nn.Module):
    """A modulator: each neuron's response scaled by a behaviour signal, all neurons at once."""

    def __init__(self, neurons: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, neurons))

    def forward(self, x: torch.Tensor, behavior: torch.Tensor) -> torch.Tensor:
        return x * self.gain * behavior.mean()


class MixingNeurons(nn.Module):
    """A lab's wrapper that normalises each response by the population's: not one neuron at a time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        responses = self.model(x, **kwargs)
        return responses / responses.mean(dim=1, keepdim=True)


@pytest.mark.parametrize("case", ["modulator", "mixing"])
def test_a_model_that_reads_all_neurons_after_the_readout_is_evaluated_in_full(case, caplog):
    if case == "modulator":
        modulator = nn.ModuleDict({key: Gain(count) for key, count in NEURONS.items()})
        model = small_encoder(modulator=modulator)
        kwargs = {"behavior": torch.tensor([[2.0, 1.0, 0.5]])}
        why = "modulator reads all neurons at once"
    else:
        model, kwargs = MixingNeurons(small_encoder()), {}
        why = "change its objective or gradient beyond rounding"
    config = method_config("cpu", 4)
    with caplog.at_level(logging.WARNING, logger="mei.preparation"):
        found = gradient_ascent(None, objective(model, "scan-a", 4, **kwargs), config, 1, shape=SHAPE)
    assert SELECTED in caplog.text and why in caplog.text
    expected = gradient_ascent(None, objective(FullReadout(model), "scan-a", 4, **kwargs), config, 1, shape=SHAPE)
    assert_same(found, expected, tolerance=0)


def test_models_without_the_library_readouts_or_with_their_own_selection_run_as_before(caplog, monkeypatch):
    library = import_neuralpredictors()
    model = small_encoder()
    calls = []

    class OwnSelection(type(model)):
        def forward_selected(self, x, units, **kwargs):
            calls.append(units.shape)
            return self(x, **kwargs)[torch.arange(x.shape[0])[:, None], units]

    model.__class__ = OwnSelection
    counting = Counting(monkeypatch, library.layers.readouts.FullGaussian2d)
    config = method_config("cpu", 3)
    with caplog.at_level(logging.WARNING, logger="mei.preparation"):
        gradient_ascent(None, objective(model, "scan-a", 1), config, 1, shape=SHAPE)
        plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
        gradient_ascent(None, ConstrainedOutputModel(plain, 5), config, 1, shape=SHAPE)
    assert calls, "the model's own forward_selected comes first"
    assert counting.selected == 0
    assert caplog.text == ""


def test_a_subclass_with_its_own_forward_is_not_recognised():
    library = import_neuralpredictors()
    gaussian = library.layers.readouts.FullGaussian2d

    class Remapped(gaussian):
        def forward(self, x, **kwargs):
            return super().forward(x, **kwargs) * 2

    assert library_class(object.__new__(gaussian), readouts.SELECTORS) is gaussian
    assert library_class(object.__new__(Remapped), readouts.SELECTORS) is None
    factorized = library.layers.readouts.SpatialXFeatureLinear
    assert library_class(object.__new__(factorized), readouts.SELECTORS).__name__ == "FullFactorized2d"


def test_the_library_core_is_prepared_batch_norms_folded_activations_merged_then_restored():
    model = small_encoder(layers=3)
    input_ = torch.randn(2, *SHAPE[1:])
    expected = model(input_, data_key="scan-a")
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    activations = [module for module in model.modules() if type(module).__name__ == "AdaptiveELU"]
    assert len(norms) == len(activations) == 3  # two of the norms follow a DepthSeparableConv2d
    with generation_mode(model, "cpu"):
        assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
        assert sum(type(module) is nn.ELU for module in model.modules()) == 3
        stand_ins = [module for module in model.modules() if isinstance(module, readouts.SelectedReadout)]
        assert len(stand_ins) == len(NEURONS)
        assert torch.allclose(model(input_, data_key="scan-a"), expected, atol=1e-6)
    assert [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)] == norms
    assert [module for module in model.modules() if type(module).__name__ == "AdaptiveELU"] == activations
    assert not any(isinstance(module, readouts.SelectedReadout) for module in model.modules())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_rewrites_are_kept_and_the_selected_readouts_equal_the_full_readout_on_the_cpu(caplog):
    ensemble = EnsembleModel(small_encoder(seed=0), small_encoder(seed=1))
    objectives = [objective(ensemble, data_key, unit) for data_key, unit in KEYS]
    seeds = list(range(len(KEYS)))
    # With PyTorch's defaults, cuDNN convolves in TensorFloat-32: the probe must still recognise the rewrites.
    with caplog.at_level(logging.WARNING, logger="mei.preparation"):
        outcomes = dict(
            generate_many(None, objectives, "mei.methods.gradient_ascent", method_config("cuda", 6), seeds, shape=SHAPE)
        )
    assert caplog.text == ""
    for index, (data_key, unit) in enumerate(KEYS):
        reference = objective(FullReadout(ensemble), data_key, unit)
        expected = gradient_ascent(None, reference, method_config("cpu", 6), seeds[index], shape=SHAPE)
        assert_same(outcomes[index], expected, tolerance=1e-4)
