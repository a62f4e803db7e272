"""Reading and checking the configuration of the gradient-ascent method."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import policy
from .errors import ConfigurationError
from .import_utils import build_component, import_object

REQUIRED_COMPONENTS = ("initial", "optimizer", "stopper")
OPERATION_COMPONENTS = ("transform", "regularization", "precondition", "postprocessing")
SETTINGS = ("device", "n_meis", "model_forward_kwargs", "inhibitory", "objectives", "validation")
TRANSPARENCY_KEYS = ("transparency", "transparency_weight", "background")
# Keys that lab configs written for the reference framework carry and that it ignored as well.
IGNORED_LEGACY_KEYS = ("mei_shape",)
BUILT_IN_METHODS = ("mei.methods.gradient_ascent", "mei.methods.diverse_gradient_ascent")
KNOWN_KEYS = frozenset(REQUIRED_COMPONENTS + OPERATION_COMPONENTS + SETTINGS + TRANSPARENCY_KEYS + IGNORED_LEGACY_KEYS)


def resolve_device(name: Any) -> torch.device:
    """The torch device for a config's ``device`` value, checked to exist here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ConfigurationError(f"device must be 'cpu' or 'cuda', got {name!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise ConfigurationError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            "the method config asks for device 'cuda' but no CUDA device is available to this process "
            '(torch.cuda.is_available() is False): run it on a GPU worker or set "device": "cpu"'
        )
    return device


@dataclass(frozen=True)
class MethodConfig:
    """A validated copy of a gradient-ascent method config; the caller's dict is never changed."""

    device: torch.device
    components: Mapping[str, Mapping[str, Any]]
    objectives: tuple[Mapping[str, Any], ...] = ()
    n_meis: int = 1
    inhibitory: bool = False
    model_forward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    validation: Mapping[str, Any] | None = None
    # With transparency, the background component's spec and the weight (``mei.transparency``).
    background: Mapping[str, Any] | None = None
    transparency_weight: float = 1.0

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> MethodConfig:
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"the method config must be a dict, got {type(config).__name__}")
        config = copy.deepcopy(dict(config))
        unknown = sorted(set(config) - KNOWN_KEYS)
        if unknown:
            raise ConfigurationError(
                f"unknown keys {unknown} in the method config; known keys are {sorted(KNOWN_KEYS)}"
            )
        missing = [key for key in ("device", *REQUIRED_COMPONENTS) if key not in config]
        if missing:
            raise ConfigurationError(f"the method config lacks the required keys {missing}")
        background, transparency_weight = _transparency(config)
        n_meis = config.get("n_meis", 1)
        if isinstance(n_meis, bool) or not isinstance(n_meis, int) or n_meis < 1:
            raise ConfigurationError(f"n_meis must be a positive integer, got {n_meis!r}")
        policy.bounded("n_meis", n_meis)
        objectives = config.get("objectives") or []
        if not isinstance(objectives, list | tuple):
            raise ConfigurationError(f"objectives must be a list of components, got {objectives!r}")
        paths = [spec.get("path") if isinstance(spec, Mapping) else spec for spec in objectives]
        duplicated = sorted({str(path) for path in paths if paths.count(path) > 1})
        if duplicated:
            raise ConfigurationError(f"objectives are logged by path; these appear twice: {duplicated}")
        forward_kwargs = config.get("model_forward_kwargs") or {}
        if not isinstance(forward_kwargs, Mapping):
            raise ConfigurationError(f"model_forward_kwargs must be a dict, got {forward_kwargs!r}")
        components = {
            role: config[role] for role in REQUIRED_COMPONENTS + OPERATION_COMPONENTS if config.get(role) is not None
        }
        validation = config.get("validation")
        if validation is not None:
            _check_validation(validation)
            if background is not None:
                raise ConfigurationError(
                    "validation scores the images as they are, without their background: it cannot be combined "
                    "with transparency"
                )
        return cls(
            device=resolve_device(config["device"]),
            components=components,
            objectives=tuple(objectives),
            n_meis=n_meis,
            inhibitory=bool(config.get("inhibitory", False)),
            model_forward_kwargs=dict(forward_kwargs),
            validation=validation,
            background=background,
            transparency_weight=transparency_weight,
        )


def _transparency(config: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, float]:
    """The background spec and weight when ``transparency`` is on, else ``(None, 1.0)``: the reference read
    ``transparency_weight`` and ``background`` only then."""
    if not config.get("transparency", False):
        return None, 1.0
    background = config.get("background")
    if not isinstance(background, Mapping) or "path" not in background:
        raise ConfigurationError(
            "transparency needs a 'background' component, e.g. {'path': 'mei.legacy.ops.WhiteNoiseBackground', "
            f"'kwargs': {{'mean': 0, 'std': 1, 'shape': [1, 1, 36, 64], 'strength': 1}}}}, got {background!r}"
        )
    weight = config.get("transparency_weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ConfigurationError(f"transparency_weight must be a number, got {weight!r}")
    return background, float(weight)


def _check_validation(validation: Any) -> None:
    held_out = validation.get("held_out") if isinstance(validation, Mapping) else None
    valid_held_out = isinstance(held_out, int) and not isinstance(held_out, bool) and held_out > 0
    if not isinstance(validation, Mapping) or len(validation) != 1 or not (valid_held_out or "model" in validation):
        raise ConfigurationError(
            "validation must be {'held_out': k} (score the MEI on the ensemble's last k members, climbing the "
            "others) or {'model': {'path': ..., 'kwargs': {...}}} (a function on the allow-list that returns the "
            f"held-out model), got {validation!r}"
        )


@dataclass(frozen=True)
class Diversity:
    """The ``diversity`` settings of ``mei.methods.diverse_gradient_ascent``: each image is held above
    ``fraction`` of the MEI's activation, and ``weight`` scales the images' diversity (``diversity_of``)."""

    fraction: float = 0.85
    weight: float = 1.0

    @classmethod
    def parse(cls, settings: Any) -> Diversity:
        if not isinstance(settings, Mapping) or set(settings) - {"fraction", "weight"}:
            raise ConfigurationError(
                f"diversity must be a dict with 'fraction' (0 to 1) and 'weight' (> 0), got {settings!r}"
            )
        if any(isinstance(value, bool) or not isinstance(value, int | float) for value in settings.values()):
            raise ConfigurationError(f"diversity's fraction and weight must be numbers, got {settings!r}")
        diversity = cls(**settings)
        if not 0 < diversity.fraction <= 1 or not diversity.weight > 0:
            raise ConfigurationError(f"diversity needs 0 < fraction <= 1 and weight > 0, got {settings!r}")
        return diversity


def validate_method(method_fn: str, method_config: Mapping[str, Any]) -> None:
    """Checks, as for a row, that a method can run: its function and component paths are on the allow-list
    (``mei.policy``) and import, and for the built-in gradient ascent the config's keys are valid and its stopper
    can be built within the limits. A GPU is not needed to check a CUDA config.
    """
    with policy.enforced():
        method = import_object(method_fn)
        if not callable(method):
            raise ConfigurationError(f"method_fn '{method_fn}' is not callable")
        if method_fn not in BUILT_IN_METHODS:
            return
        if not isinstance(method_config, Mapping):
            raise ConfigurationError(f"the method config must be a dict, got {type(method_config).__name__}")
        if method_fn == "mei.methods.diverse_gradient_ascent":
            Diversity.parse(method_config.get("diversity", {}))
            method_config = {name: value for name, value in method_config.items() if name != "diversity"}
        MethodConfig.parse({**method_config, "device": "cpu"})
        if str(method_config.get("device", "")).split(":")[0] not in ("cpu", "cuda"):
            raise ConfigurationError(f"device must be 'cpu' or 'cuda', got {method_config.get('device')!r}")
        roles = [role for role in REQUIRED_COMPONENTS + OPERATION_COMPONENTS if method_config.get(role)]
        named = [(role, method_config[role]) for role in roles]
        named += [("objectives", spec) for spec in method_config.get("objectives") or []]
        background, _ = _transparency(method_config)
        if background is not None:
            named.append(("background", background))
        for role, spec in named:
            if not isinstance(spec, Mapping) or "path" not in spec:
                raise ConfigurationError(
                    f"a component must be a mapping with a 'path' and optional 'kwargs', got {spec!r}"
                )
            _check_arguments(role, spec["path"], import_object(spec["path"]), spec.get("kwargs") or {})
        build_component("stopper", method_config["stopper"])


def _check_arguments(role: str, path: str, component: Any, kwargs: Mapping[str, Any]) -> None:
    """A misspelt argument fails when the row is added, not once per key on the workers."""
    try:
        signature = inspect.signature(component)
    except (TypeError, ValueError):
        return  # a builtin without a signature: it is checked when built
    try:
        signature.bind_partial(**kwargs)
    except TypeError as error:
        accepted = [name for name in signature.parameters if name not in ("self", "args", "kwargs")]
        raise ConfigurationError(f"component '{role}' ({path}): {error}; it takes {accepted}") from None
