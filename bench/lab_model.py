"""The Sensorium 2022 baseline built with the lab library itself (neuralpredictors 0.3.0), random weights.

Labs build their models this way: a ``Stacked2dCore`` with depth-separable layers, one ``FullGaussian2d`` per
data key in a ``MultiReadoutBase``, both in a ``FiringRateEncoder``, called with ``data_key=...``. The core's
arguments are the baseline's; batch-norm statistics are drawn as trained models have them. Neither the core
nor the readouts define ``forward_selected``: the framework recognises the readouts by class.

neuralpredictors 0.3.0 predates Python 3.10 and imports torchvision at the top of its cores module, for a
transfer-learning core that nothing here builds. ``import_neuralpredictors`` makes up for both, and nothing
outside the benchmarks and tests uses it.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib.util
import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mei.modules import EnsembleModel

INPUT_SHAPE = (1, 36, 64)
DATA_KEY = "27204-5-13"
CORE_ARGUMENTS = dict(
    input_channels=1,
    hidden_channels=64,
    input_kern=9,
    hidden_kern=7,
    layers=4,
    gamma_input=6.3831,
    skip=0,
    final_nonlinearity=True,
    bias=False,
    momentum=0.9,
    pad_input=False,
    batch_norm=True,
    hidden_dilation=1,
    laplace_padding=None,
    input_regularizer="LaplaceL2norm",
    stack=-1,
    depth_separable=True,
    linear=False,
    use_avg_reg=False,
)
READOUT_ARGUMENTS = dict(init_mu_range=0.3, init_sigma=0.1, bias=True, gamma_readout=0.0076, gauss_type="full")


def import_neuralpredictors() -> types.ModuleType:
    """neuralpredictors 0.3.0, importable on Python 3.11 without torchvision."""
    for name in ("Iterable", "Mapping", "Sequence"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        sys.modules["torchvision"] = types.ModuleType("torchvision", "absent: only TransferLearningCore needs it")
    # The cores' module is the one that needs the two: importing it checks they are in place.
    import neuralpredictors.layers.cores  # noqa: F401

    return sys.modules["neuralpredictors"]


def build_encoder(
    neurons: Mapping[str, int],
    seed: int = 0,
    readout: str = "FullGaussian2d",
    hidden_channels: int = 64,
    layers: int = 4,
    **encoder_arguments: Any,
) -> nn.Module:
    """A ``FiringRateEncoder`` with one ``readout`` per data key (``neurons``: data key -> neuron count), weights
    and batch-norm statistics drawn from ``seed``, in eval mode."""
    import_neuralpredictors()
    from neuralpredictors.layers import readouts
    from neuralpredictors.layers.cores import Stacked2dCore
    from neuralpredictors.layers.encoders import FiringRateEncoder

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        # The library's notices about initialisation (mean activity, deprecated readouts) concern training.
        warnings.simplefilter("ignore")
        core = Stacked2dCore(**{**CORE_ARGUMENTS, "hidden_channels": hidden_channels, "layers": layers})
        in_shape = core(torch.zeros(1, *INPUT_SHAPE)).shape[1:]
        multi = readouts.MultiReadoutBase(
            {key: in_shape for key in neurons},
            dict(neurons),
            base_readout=getattr(readouts, readout),
            **_readout_arguments(readout),
        )
        model = FiringRateEncoder(core, multi, **encoder_arguments)
        _as_if_trained(model)
    return model.eval()


def build_ensemble(
    neurons: Mapping[str, int] | None = None, members: int = 5, seed: int = 0, **kwargs: Any
) -> nn.Module:
    """The 5 x 8,000 ensemble of the benchmarks (one data key) unless told otherwise."""
    neurons = neurons or {DATA_KEY: 8000}
    return EnsembleModel(*(build_encoder(neurons, seed + index, **kwargs) for index in range(members))).eval()


def _readout_arguments(readout: str) -> dict[str, Any]:
    if readout == "FullGaussian2d":
        return READOUT_ARGUMENTS
    if readout == "Gaussian2d":
        return dict(bias=True, init_mu_range=0.3, init_sigma_range=0.1, fixed_sigma=True)
    if readout == "PointPooled2d":
        return dict(bias=True, pool_steps=2, pool_kern=2, init_range=0.3)
    return dict(bias=True, normalize=True, init_noise=0.1)  # FullFactorized2d, SpatialXFeatureLinear


def _as_if_trained(model: nn.Module) -> None:
    """Batch-norm statistics and readout weights away from their initial values, as training leaves them."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    for name, parameter in model.named_parameters():
        if name.endswith(("_features", "features", "bias")) and "readout" in name:
            parameter.data.normal_(0, 0.1)
