"""Chapter 1 helpers: watching a PixelCNN fill in an image, and measuring what each model costs."""

from __future__ import annotations

import time

import torch
from matplotlib.figure import Figure

from ..evaluation import recognised  # noqa: F401 (chapter 1 meets it here: ch01.recognised)
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


def median_seconds(fn, repeats: int = 5) -> float:
    """The median wall time of `fn()` over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def seconds_per_call(fn, repeats: int = 5) -> float:
    """`median_seconds` of a network call, without autograd."""
    with torch.no_grad():
        return median_seconds(fn, repeats)


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


def radial_power_spectrum(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies, power): the power spectrum of (B, C, H, W) images, averaged over images and rings.

    power[k] is the mean of |DFT(x)|^2 / (H W) over the images and over the 2-D frequencies whose
    distance from zero rounds to k cycles per image, k = 0, 1, ..., min(H, W) // 2. With this
    normalisation white noise of variance s^2 has power s^2 at every k, and by Parseval the mean
    over *all* 2-D frequencies (corners included) is the mean of x^2 over the pixels.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    power_2d = torch.fft.fft2(images.double()).abs().square().mean(dim=(0, 1)) / (h * w)  # (H, W)
    fy, fx = torch.meshgrid(torch.fft.fftfreq(h, 1 / h), torch.fft.fftfreq(w, 1 / w), indexing="ij")
    ring = torch.sqrt(fy.square() + fx.square()).round().long()  # (H, W): cycles per image
    k_max = min(h, w) // 2
    keep = ring <= k_max
    total = torch.zeros(k_max + 1, dtype=torch.float64).index_add_(0, ring[keep], power_2d[keep])
    count = torch.zeros(k_max + 1, dtype=torch.float64).index_add_(0, ring[keep], torch.ones_like(power_2d[keep]))
    return torch.arange(k_max + 1), total / count


def drowning_timestep(signal_power: torch.Tensor, alpha_bars: torch.Tensor) -> torch.Tensor:
    """For each frequency, the first timestep t at which the noise's power passes the signal's.

    x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps has, at a frequency where x_0 has power
    P, signal power alpha-bar_t P and noise power 1 - alpha-bar_t (flat); the noise wins from the
    first t with alpha-bar_t P < 1 - alpha-bar_t. Returns len(alpha_bars) where it never does.
    """
    signal = alpha_bars.double()[None, :] * signal_power.double()[:, None]  # (K, T)
    drowned = signal < (1 - alpha_bars.double())[None, :]
    first = drowned.double().argmax(dim=1)
    return torch.where(drowned.any(dim=1), first, torch.full_like(first, len(alpha_bars)))
