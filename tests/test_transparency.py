"""Transparency with the reference framework's semantics, on the CPU (the reference ran it on CUDA only)."""

import pytest
import torch
from torch import nn

from mei.backgrounds import WhiteNoiseBackground
from mei.batching import why_not_batched
from mei.errors import ConfigurationError
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel

SHAPE = (1, 2, 10, 12)
STEPS = 5


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ELU(), nn.Flatten(), nn.Linear(3 * 8 * 10, 4)).eval()


def transparent_config(device: str = "cpu", **overrides) -> dict:
    return {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
        "regularization": {"path": "mymodule.AlphaCost", "kwargs": {"weight": 0.3}},
        "precondition": {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1.0}},
        "postprocessing": {"path": "mei.legacy.ops.ClipRange", "kwargs": {"x_min": -1.0, "x_max": 1.0}},
        "transparency": True,
        "transparency_weight": 0.8,
        "background": {"path": "mei.backgrounds.ConstantBackground", "kwargs": {"value": 0.25}},
        "n_meis": 2,
        "device": device,
        **overrides,
    }


def reference_arithmetic(objective: nn.Module, seed: int) -> torch.Tensor:
    """The reference's transparent gradient ascent, written out step by step (REFERENCE.md)."""
    from mei.postprocessing import ClipRange
    from mei.preconditions import GaussianBlur

    torch.manual_seed(seed)
    x = torch.cat([torch.randn(2, *SHAPE[1:]), torch.full((2, 1, *SHAPE[2:]), 0.5)], dim=1).requires_grad_()
    optimizer = torch.optim.SGD([x], lr=0.1)
    blur, clip, weight = GaussianBlur(sigma=1.0), ClipRange(-1.0, 1.0), 0.8
    for step in range(STEPS + 1):
        alpha = x[:, -1:]
        background = torch.full((1, *SHAPE[2:]), 0.25) * weight
        shown = torch.cat([background * (1 - alpha) + x[:, :1] * alpha, x[:, 1:-1]], dim=1)
        evaluation = objective(shown).sum()
        mean_alpha = x[:, -1].mean()
        loss = (-evaluation + 0.3 * mean_alpha) * (1 - mean_alpha * weight)
        optimizer.zero_grad()
        loss.backward()
        x.grad = blur(x.grad, step)
        optimizer.step()
        x.data = clip(x.data, step)
    return x.detach()


def test_an_opaque_background_gives_the_reference_arithmetic_and_the_mei_keeps_its_alpha():
    objective = ConstrainedOutputModel(model(), 1)
    mei, _, _ = gradient_ascent(None, objective, transparent_config(), seed=3, shape=SHAPE)
    assert mei.shape == (2, SHAPE[1] + 1, *SHAPE[2:])
    expected = reference_arithmetic(objective, seed=3)
    assert torch.allclose(mei, expected, atol=1e-6)
    assert not torch.allclose(mei[:, -1], torch.full_like(mei[:, -1], 0.5)), "the alpha channel is optimised"


def test_transparency_is_generated_key_by_key_and_needs_a_background():
    objective = ConstrainedOutputModel(model(), 0)
    assert "mean alpha" in why_not_batched("mei.methods.gradient_ascent", transparent_config(), [objective])
    without = transparent_config()
    del without["background"]
    with pytest.raises(ConfigurationError, match="transparency needs a 'background'"):
        gradient_ascent(None, objective, without, seed=1, shape=SHAPE)
    off = {**transparent_config(), "transparency": False}
    mei, _, _ = gradient_ascent(None, objective, off, seed=1, shape=SHAPE)
    assert mei.shape == (2, *SHAPE[1:]), "transparency: False ignores the other keys, as the reference did"


def test_the_reference_white_noise_background_peaks_at_its_strength():
    torch.manual_seed(0)
    noise = WhiteNoiseBackground(mean=0.0, std=1.0, shape=(1, 1, 6, 8), strength=0.5)(torch.zeros(1, 1, 6, 8), 0)
    assert noise.shape == (1, 1, 6, 8)
    assert noise.abs().max() == pytest.approx(2.12 * 0.5)
    config = transparent_config(
        background={
            "path": "mei.legacy.ops.WhiteNoiseBackground",
            "kwargs": {"mean": 0, "std": 1, "shape": [1, 1, 10, 12]},
        }
    )
    first, _, _ = gradient_ascent(None, ConstrainedOutputModel(model(), 2), config, seed=4, shape=SHAPE)
    again, _, _ = gradient_ascent(None, ConstrainedOutputModel(model(), 2), config, seed=4, shape=SHAPE)
    assert torch.equal(first, again), "the noise is drawn from the seeded generator"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transparency_on_cuda_equals_the_cpu():
    objective = ConstrainedOutputModel(model(), 1)
    on_cpu, _, _ = gradient_ascent(None, objective, transparent_config(), seed=3, shape=SHAPE)
    on_cuda, _, _ = gradient_ascent(None, objective, transparent_config("cuda"), seed=3, shape=SHAPE)
    assert torch.allclose(on_cuda, on_cpu, atol=1e-4)
