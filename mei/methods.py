"""Method functions: ``method(dataloaders, model, config, seed) -> (mei, score, output)``."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .config import OPERATION_COMPONENTS, Diversity, MethodConfig
from .domain import State
from .errors import ConfigurationError
from .import_utils import build_component
from .modules import EnsembleModel
from .optimization import Evaluate, Run, optimize
from .preparation import Probe, generation_mode
from .tracking import Tracker
from .transparency import Transparency

BATCH_FIELDS = ("inputs", "images")
PROBE_IMAGES = 4


def _first_field(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if hasattr(batch, "_asdict"):
        batch = batch._asdict()
    if isinstance(batch, Mapping):
        for name in BATCH_FIELDS:
            if name in batch:
                return batch[name]
        return next(iter(batch.values()))
    if isinstance(batch, Sequence) and batch:
        return batch[0]
    raise ConfigurationError(f"cannot find the inputs in a batch of type {type(batch).__name__}")


def input_shape(dataloaders: Mapping[str, Any] | None, shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The shape of one input batch: ``shape`` if given, else that of the first training batch.

    The training loaders are ``dataloaders["train"]``, a mapping of data keys to loaders; the inputs of a
    batch are its field ``inputs``, else ``images``, else its first field.
    """
    if shape is not None:
        shape = tuple(int(size) for size in shape)
        if len(shape) < 2:
            raise ConfigurationError(f"shape must be (batch, channels, ...) like a data batch, got {shape}")
        return shape
    loaders = (dataloaders or {}).get("train")
    if not loaders:
        raise ConfigurationError(
            "cannot infer the input shape: there are no dataloaders['train']; pass shape=(1, C, H, W)"
        )
    loader = next(iter(loaders.values())) if isinstance(loaders, Mapping) else loaders
    return tuple(_first_field(next(iter(loader))).shape)


def gradient_ascent(
    dataloaders: Mapping[str, Any] | None,
    model: nn.Module,
    config: Mapping[str, Any],
    seed: int,
    *,
    shape: Sequence[int] | None = None,
) -> tuple[Tensor, float, dict[str, dict[str, list]]]:
    """Generates MEIs by gradient ascent on the input of ``model``.

    Returns the MEIs (a CPU tensor of shape ``(n_meis, C, H, W)``), the score (the model's evaluation of the
    last step's input; the mean over images when there are several) and the log of the tracked objectives.
    """
    method = MethodConfig.parse(config)
    batch_shape = input_shape(dataloaders, shape)
    climbed, held_out = validation_split(model, method.validation)
    guess, run = start_run(method, seed, batch_shape)
    forward_kwargs = method.model_forward_kwargs
    (final,) = ascend(lambda images, rows: climbed(images, **forward_kwargs), climbed, method, [guess], [run])
    log = run.tracker.log
    if held_out is not None:
        log["validation"] = {"score": validation_score(held_out, final.post_processed_input, method)}
    return final.post_processed_input.cpu(), final.evaluation, log


def validation_split(objective: nn.Module, validation: Mapping[str, Any] | None) -> tuple[nn.Module, nn.Module | None]:
    """The objective to climb and the held-out one that scores the result (``None`` without ``validation``).

    ``{"held_out": k}``: the objective's model must be an ``EnsembleModel``; its last ``k`` members score, the
    others are climbed. ``{"model": spec}``: the component ``spec`` (a function on the allow-list, e.g. one
    that loads a lab's second ensemble) builds the held-out model; the objective is climbed as it is. Either
    way the held-out objective is the objective with its ``model`` replaced: the same units and settings.
    """
    if validation is None:
        return objective, None
    model = getattr(objective, "model", None)
    if not isinstance(model, nn.Module):
        raise ConfigurationError(
            f"validation needs an objective with a 'model' to replace (ConstrainedOutputModel, ...), got {objective!r}"
        )
    if "model" in validation:
        return objective, retargeted(objective, build_component("validation", validation["model"]))
    held_out = validation["held_out"]
    members = list(getattr(model, "members", []))
    if not isinstance(model, EnsembleModel) or len(members) <= held_out:
        raise ConfigurationError(
            f"validation held_out={held_out} needs an EnsembleModel of more than {held_out} members, got {model!r}"
        )
    climbed = retargeted(objective, EnsembleModel(*members[:-held_out]))
    return climbed, retargeted(objective, EnsembleModel(*members[-held_out:]))


def retargeted(objective: nn.Module, model: nn.Module) -> nn.Module:
    """A copy of ``objective`` with ``model`` in place of its own; the original is unchanged."""
    copied = copy.copy(objective)
    copied._modules = dict(objective._modules)
    copied.model = model
    return copied


def validation_score(held_out: nn.Module, images: Tensor, method: MethodConfig) -> float:
    """The held-out objective's value of the final images (their mean when there are several), negated for an
    inhibitory method as ``score`` is; the model as it is, unprobed rewrites left out."""
    value = float(evaluated(held_out, images, method).float().mean())
    return -value if method.inhibitory else value


def evaluated(objective: nn.Module, images: Tensor, method: MethodConfig) -> Tensor:
    """``objective(images)`` once, after the ascent: the model as it is (no unprobed rewrite), no gradient."""
    with generation_mode(objective, method.device, rewrite=False), torch.no_grad():
        return objective(images.to(method.device), **method.model_forward_kwargs)


def seed_generators(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for the generators a generation on ``device`` uses (the CPU's, and CUDA's on
    a GPU). The same states, without ``torch.manual_seed``'s queueing of seeds for every other backend, which
    records a stack trace each time (a millisecond a key, a second for a batch of 1,024 keys)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def start_run(method: MethodConfig, seed: int, batch_shape: Sequence[int]) -> tuple[Tensor, Run]:
    """The initial guess of one generation, drawn on the CPU from ``seed``, and its own stopper and tracker."""
    seed_generators(seed, method.device)
    initial = build_component("initial", method.components["initial"])
    guess = initial(method.n_meis, *batch_shape[1:])
    expected = (method.n_meis, *batch_shape[1:])
    if not isinstance(guess, Tensor) or tuple(guess.shape) != expected:
        raise ConfigurationError(
            f"the initial component {initial!r} must return a tensor of shape {expected}, "
            f"got {getattr(guess, 'shape', type(guess).__name__)}"
        )
    if method.background is not None:
        guess = Transparency.with_alpha(guess)
    stopper = build_component("stopper", method.components["stopper"])
    tracker = Tracker({spec["path"]: build_component("objectives", spec) for spec in method.objectives})
    return guess, Run(method.n_meis, stopper, tracker)


def ascend(
    evaluate: Evaluate, model: nn.Module, method: MethodConfig, guesses: Sequence[Tensor], runs: Sequence[Run]
) -> list[State]:
    """Optimizes the runs' images together, one optimizer over all of them; returns each run's last state."""
    x = torch.cat(list(guesses)).to(method.device).requires_grad_()
    optimizer = build_component("optimizer", method.components["optimizer"], params=[x])
    operations = {
        role: build_component(role, method.components[role])
        for role in OPERATION_COMPONENTS
        if role in method.components
    }
    transform = operations.get("transform")
    transparency = None
    if method.background is not None:
        transparency = Transparency(build_component("background", method.background), method.transparency_weight)

    def objective(images: Tensor) -> Tensor:
        rows = torch.arange(images.shape[0], device=images.device)
        if transparency is not None:
            return evaluate(transparency.model_input(images, 0), rows)
        return evaluate(images if transform is None else transform(images, 0), rows)

    # The images of the first keys probe the rewrites: the model as it is may need much more memory per image
    # than rewritten.
    probe_images = method.n_meis * -(-PROBE_IMAGES // method.n_meis)
    with generation_mode(model, method.device, Probe(objective, x[:probe_images])):
        return optimize(
            evaluate, x, optimizer, runs, inhibitory=method.inhibitory, transparency=transparency, **operations
        )


class DiverseObjective(nn.Module):
    """One value for a key's images together: their diversity (``diversity_of``) times ``weight``, less a steep
    penalty for each image whose activation falls short of ``floor``. The penalty aims a little above the
    floor (``AIM``) so that images end above it, not on it."""

    AIM = 1.02
    PENALTY = 100.0

    def __init__(self, objective: nn.Module, floor: float, weight: float) -> None:
        super().__init__()
        self.objective = objective
        self.floor = floor
        self.weight = weight

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        activations = self.objective(x, *args, **kwargs).reshape(x.shape[0])
        shortfall = torch.relu(self.AIM * self.floor - activations) / self.floor  # the floor is positive
        return self.weight * diversity_of(x) - self.PENALTY * shortfall.sum()


def diversity_of(images: Tensor) -> Tensor:
    """How different ``images`` are: one less the mean over pairs of ``((1 + correlation) / 2) ** 2``, 0 for
    copies, 3/4 for uncorrelated images, 1 for opposites. The square makes near-copies cost more than
    opposites gain, so images spread evenly (a plain mean of correlations is as low for two pairs of opposite
    images as for images a quarter cycle apart)."""
    flat = images.flatten(1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    count = images.shape[0]
    pairs = torch.triu_indices(count, count, offset=1, device=images.device)
    similarity = ((1 + (flat @ flat.T)[pairs[0], pairs[1]]) / 2) ** 2
    return 1 - similarity.mean() if count > 1 else similarity.new_zeros(())


def diverse_gradient_ascent(
    dataloaders: Mapping[str, Any] | None,
    model: nn.Module,
    config: Mapping[str, Any],
    seed: int,
    *,
    shape: Sequence[int] | None = None,
) -> tuple[Tensor, float, dict[str, Any]]:
    """Diverse exciting inputs (after Ding et al., 2026): ``n_meis`` images that each drive ``model`` to at
    least ``diversity.fraction`` of its MEI's activation while differing from each other as much as they can.

    The MEI is generated first, in the same call, with the config's components and one image; then the
    ``n_meis`` images are optimised together with the same components on ``DiverseObjective``. The images of
    one key are coupled, so keys are generated one at a time, never across a batch. Returns the images, their
    mean activation as the score, and the tracker log with a ``diversity`` entry: the MEI's activation, the
    floor, each image's activation and their diversity.
    """
    settings = {name: value for name, value in config.items() if name not in ("diversity", "validation")}
    diversity = Diversity.parse(config.get("diversity", {}))
    method = MethodConfig.parse({name: value for name, value in config.items() if name != "diversity"})
    if method.inhibitory or method.background is not None:
        raise ConfigurationError(
            "diverse_gradient_ascent holds images above a share of the MEI's activation: it cannot be inhibitory "
            "or transparent"
        )
    climbed, held_out = validation_split(model, method.validation)
    mei, _, _ = gradient_ascent(dataloaders, climbed, {**settings, "n_meis": 1}, seed, shape=shape)
    (reference,) = _activations(climbed, mei, method)
    if reference <= 0:
        raise ConfigurationError(
            f"the MEI's activation is {reference:.4g}: diverse MEIs are held above a share of a positive activation; "
            "use an objective whose values are positive (a firing rate, not a log-softmax)"
        )
    floor = diversity.fraction * reference
    images, _, log = gradient_ascent(
        dataloaders, DiverseObjective(climbed, floor, diversity.weight), settings, seed, shape=shape
    )
    activations = _activations(climbed, images, method)
    log["diversity"] = {
        "mei_activation": reference,
        "floor": floor,
        "activations": activations,
        "diversity": float(diversity_of(images)),
    }
    if held_out is not None:
        log["validation"] = {"score": validation_score(held_out, images, method)}
    return images, sum(activations) / len(activations), log


def _activations(objective: nn.Module, images: Tensor, method: MethodConfig) -> list[float]:
    return [float(value) for value in evaluated(objective, images, method).reshape(images.shape[0])]
