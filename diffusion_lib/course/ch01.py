"""Chapter 1 helpers: watching a PixelCNN fill in an image, and measuring what each model costs."""

from __future__ import annotations

import time

import torch
from matplotlib.figure import Figure

from ..classifier import classify
from ..pixelcnn import PixelCNN
from ..unet import UNet
from .plots import show_grid


def raster_view(snapshots: list[torch.Tensor], index: int, pixels_per_snapshot: int) -> Figure:
    """The canvases after `(index + 1) * pixels_per_snapshot` pixels of raster-order sampling."""
    if not 0 <= index < len(snapshots):
        raise ValueError(f"index must lie in 0..{len(snapshots) - 1}, got {index}")
    canvas = snapshots[index] * 2 - 1  # {0, 1} -> [-1, 1] for display
    done = (index + 1) * pixels_per_snapshot
    return show_grid(canvas, f"after {done} of {canvas.shape[-1] * canvas.shape[-2]} pixels ({done} network calls)")


def seconds_per_call(fn, repeats: int = 5) -> float:
    """The median wall time of `fn()` over `repeats` runs, after one warm-up run."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def call_cost_by_side(unet: UNet, pixelcnn: PixelCNN, sides, repeats: int = 3) -> dict[int, tuple[float, float]]:
    """{side: (seconds per U-Net call, seconds per PixelCNN call)} for one image of side x side pixels."""
    costs = {}
    for side in sides:
        x = torch.zeros(1, 1, side, side)
        t = torch.zeros(1, dtype=torch.long)
        conditional = torch.zeros(1, dtype=torch.long) if unet.config.num_classes else None
        costs[side] = (seconds_per_call(lambda: unet(x, t, conditional), repeats),
                       seconds_per_call(lambda: pixelcnn(x), repeats))
    return costs


def recognised(classifier, images: torch.Tensor, threshold: float = 0.9) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(fraction the classifier names with confidence >= threshold, predicted classes, confidences)."""
    predicted, confidence = classify(classifier, images)
    return (confidence >= threshold).float().mean().item(), predicted, confidence
