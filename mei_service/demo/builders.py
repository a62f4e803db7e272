"""The in-silico experiment's nnfabrik functions: a dataset of model-neuron responses, a small CNN, a trainer.

The neurons are linear-nonlinear with Gabor receptive fields fixed by ``rf_seed``; the stimuli are white
noise and the responses Poisson spikes. The CNN (a linear convolutional core and a factorised readout: a
spatial mask and channel weights per neuron) can express such neurons, so a trained ensemble's MEIs should
look like the true receptive fields.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from mei.synthetic import LinearNonlinearPopulation, gabor_filters

DATA_KEY = "in-silico-v1"


def true_receptive_fields(neurons: int, height: int, width: int, rf_seed: int = 0, **_: Any) -> Tensor:
    return gabor_filters(neurons, height, width, seed=rf_seed)


def in_silico_v1(
    seed: int,
    neurons: int = 16,
    height: int = 24,
    width: int = 32,
    rf_seed: int = 0,
    train_images: int = 4000,
    validation_images: int = 500,
    gain: float = 3.0,
    batch_size: int = 128,
) -> dict[str, dict[str, DataLoader]]:
    """Responses of LN neurons to white noise: ``{"train": {DATA_KEY: loader}, "validation": {...}}``."""
    population = LinearNonlinearPopulation(true_receptive_fields(neurons, height, width, rf_seed), gain=gain)
    generator = torch.Generator().manual_seed(seed)
    loaders = {}
    for tier, count in (("train", train_images), ("validation", validation_images)):
        images = torch.randn(count, 1, height, width, generator=generator)
        with torch.no_grad():
            responses = torch.poisson(population(images), generator=generator)
        dataset = TensorDataset(images, responses)
        loaders[tier] = {
            DATA_KEY: DataLoader(dataset, batch_size=batch_size, shuffle=tier == "train", generator=generator)
        }
    return loaders


class FactorizedCNN(nn.Module):
    def __init__(self, neurons: int, height: int, width: int, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.core = nn.Conv2d(1, channels, kernel_size, padding=kernel_size // 2)
        self.mask = nn.Parameter(torch.randn(neurons, height * width) * 0.01)
        self.features = nn.Parameter(torch.randn(neurons, channels) / channels**0.5)
        self.bias = nn.Parameter(torch.zeros(neurons))

    def forward(self, x: Tensor, data_key: str | None = None, **kwargs: Any) -> Tensor:
        core = self.core(x).flatten(2)  # (batch, channels, pixels)
        drive = torch.einsum("bcp,np,nc->bn", core, self.mask, self.features)
        return F.softplus(drive + self.bias)


def factorized_cnn(dataloaders: dict, seed: int, channels: int = 4, kernel_size: int = 5) -> FactorizedCNN:
    images, responses = next(iter(dataloaders["train"][DATA_KEY]))
    torch.manual_seed(seed)
    return FactorizedCNN(responses.shape[1], images.shape[2], images.shape[3], channels, kernel_size)


def _correlation(predictions: Tensor, responses: Tensor) -> float:
    predictions = predictions - predictions.mean(0)
    responses = responses - responses.mean(0)
    per_neuron = (predictions * responses).sum(0) / (predictions.norm(dim=0) * responses.norm(dim=0) + 1e-9)
    return float(per_neuron.mean())


def poisson_trainer(
    model: nn.Module,
    dataloaders: dict,
    seed: int,
    uid: Any = None,
    cb: Any = None,
    epochs: int = 20,
    lr: float = 0.01,
    mask_l1: float = 1e-4,
) -> tuple[float, dict, dict]:
    """Adam on the Poisson loss with an L1 penalty on the readout masks; returns the validation correlation."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for images, responses in dataloaders["train"][DATA_KEY]:
            optimizer.zero_grad()
            loss = F.poisson_nll_loss(model(images), responses, log_input=False) + mask_l1 * model.mask.abs().sum()
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
        if cb is not None:
            cb()
    model.eval()
    with torch.no_grad():
        images, responses = (torch.cat(tensors) for tensors in zip(*dataloaders["validation"][DATA_KEY], strict=True))
        correlation = _correlation(model(images), responses)
    output = {"losses": losses, "seconds": time.perf_counter() - start}
    return correlation, output, model.state_dict()
