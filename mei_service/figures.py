"""Pictures of MEIs next to what they should resemble."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def correlation(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two images."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def save_comparison_grid(path: Path, rows: Sequence[tuple[str, Sequence[Tensor]]], titles: Sequence[str]) -> Path:
    """Saves a PNG with one row of images per ``(label, images)``, one column per title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(titles)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.1 * len(rows)), squeeze=False)
    for row, (label, images) in enumerate(rows):
        for column, image in enumerate(images):
            axis = axes[row][column]
            picture = torch.as_tensor(image).detach().float()[0]
            limit = float(picture.abs().max()) or 1.0
            axis.imshow(picture.numpy(), cmap="gray", vmin=-limit, vmax=limit)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=7)
        axes[row][0].set_ylabel(label, fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
