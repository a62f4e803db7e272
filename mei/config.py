"""Reading and checking the configuration of the gradient-ascent method."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import policy
from .errors import ConfigurationError
from .import_utils import build_component, import_object

REQUIRED_COMPONENTS = ("initial", "optimizer", "stopper")
OPERATION_COMPONENTS = ("transform", "regularization", "precondition", "postprocessing")
SETTINGS = ("device", "n_meis", "model_forward_kwargs", "inhibitory", "objectives")
# Keys that lab configs written for the reference framework carry and that it ignored as well.
IGNORED_LEGACY_KEYS = ("mei_shape", "transparency", "transparency_weight", "background")
KNOWN_KEYS = frozenset(REQUIRED_COMPONENTS + OPERATION_COMPONENTS + SETTINGS + IGNORED_LEGACY_KEYS)


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
        if config.get("transparency"):
            raise ConfigurationError("transparency mode is not supported; remove 'transparency' or set it False")
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
        return cls(
            device=resolve_device(config["device"]),
            components=components,
            objectives=tuple(objectives),
            n_meis=n_meis,
            inhibitory=bool(config.get("inhibitory", False)),
            model_forward_kwargs=dict(forward_kwargs),
        )


def validate_method(method_fn: str, method_config: Mapping[str, Any]) -> None:
    """Checks, as for a row, that a method can run: its function and component paths are on the allow-list
    (``mei.policy``) and import, and for the built-in gradient ascent the config's keys are valid and its stopper
    can be built within the limits. A GPU is not needed to check a CUDA config.
    """
    with policy.enforced():
        method = import_object(method_fn)
        if not callable(method):
            raise ConfigurationError(f"method_fn '{method_fn}' is not callable")
        if method_fn != "mei.methods.gradient_ascent":
            return
        if not isinstance(method_config, Mapping):
            raise ConfigurationError(f"the method config must be a dict, got {type(method_config).__name__}")
        MethodConfig.parse({**method_config, "device": "cpu"})
        if str(method_config.get("device", "")).split(":")[0] not in ("cpu", "cuda"):
            raise ConfigurationError(f"device must be 'cpu' or 'cuda', got {method_config.get('device')!r}")
        roles = [role for role in REQUIRED_COMPONENTS + OPERATION_COMPONENTS if method_config.get(role)]
        for spec in [*(method_config[role] for role in roles), *(method_config.get("objectives") or [])]:
            if not isinstance(spec, Mapping) or "path" not in spec:
                raise ConfigurationError(
                    f"a component must be a mapping with a 'path' and optional 'kwargs', got {spec!r}"
                )
            import_object(spec["path"])
        build_component("stopper", method_config["stopper"])
