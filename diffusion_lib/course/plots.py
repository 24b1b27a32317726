"""Figures without pyplot's global state: each function returns a new `matplotlib.figure.Figure`."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """(1, H, W) or (H, W) tensor in [-1, 1] -> (H, W) array in [0, 1] for imshow; (3, H, W) -> (H, W, 3)."""
    image = image.detach().float().cpu()
    image = image.permute(1, 2, 0) if image.ndim == 3 and image.shape[0] == 3 else image.reshape(image.shape[-2:])
    return ((image + 1) / 2).clamp(0, 1).numpy()


def show_grid(images: torch.Tensor, title: str, ncols: int = 8, captions: list[str] | None = None,
              size: float = 1.1) -> Figure:
    """A grid of images with a title and optional per-image captions."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size * ncols, size * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < n:
            ax.imshow(to_numpy_image(images[i]), cmap="gray", vmin=0, vmax=1)
            if captions:
                ax.set_title(captions[i], fontsize=8)
    fig.suptitle(title)
    return fig


def show_rows(rows: dict[str, torch.Tensor], height: float = 0.62, fontsize: int = 8) -> Figure:
    """One labelled strip per entry: the (N, 1, H, W) images in [-1, 1] side by side, the label to the left."""
    fig = Figure(figsize=(9, height * len(rows)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(rows), 1))
    for ax, (label, images) in zip(axes, rows.items()):
        ax.imshow(np.concatenate([to_numpy_image(image) for image in images], axis=1), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=fontsize)
    return fig
