"""Chapter 2 helpers: a photograph to noise, and the timestep slider's view."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from ..forward import q_sample
from ..schedules import make_schedule
from .plots import to_numpy_image


def load_photo(size: int = 128) -> torch.Tensor:
    """Grace Hopper's portrait, shipped with matplotlib, as a (1, 1, size, size) grey image in [-1, 1]."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f).convert("L")
        side = min(image.size)
        image = image.crop((0, 0, side, side)).resize((size, size))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1)[None, None]


def noising_view(t: int, schedule_name: str, images: list[torch.Tensor], noises: list[torch.Tensor]) -> Figure:
    """x_t of each image (fixed noise, so dragging t shows one trajectory), and alpha-bar and SNR with t marked."""
    schedule = make_schedule(schedule_name, 1000)
    if not 0 <= t < schedule.T:
        raise ValueError(f"t must lie in 0..{schedule.T - 1}, got {t}")
    fig = Figure(figsize=(3.0 * (len(images) + 2), 3.2), layout="constrained")
    axes = fig.subplots(1, len(images) + 2)
    steps = torch.full((1,), t)
    for ax, image, noise in zip(axes, images, noises):
        ax.imshow(to_numpy_image(q_sample(image, steps, schedule, noise)), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"x_t at t={t}")
        ax.axis("off")
    ts = np.arange(schedule.T)
    curves = ((schedule.alpha_bars.numpy(), "alpha-bar_t", "linear"), (schedule.snr.numpy(), "SNR_t", "log"))
    for ax, (values, name, yscale) in zip(axes[len(images):], curves):
        ax.plot(ts, values)
        ax.plot([t], [values[t]], "o", color="C3")
        ax.set(xlabel="t", ylabel=name, yscale=yscale, title=f"{name} = {values[t]:.3g} ({schedule_name})")
    return fig


def _normal_pdf(x, mean, variance):
    return np.exp(-((x - mean) ** 2) / (2 * variance)) / np.sqrt(2 * np.pi * variance)


def two_point_reverse_density(grid: np.ndarray, xt: float, alpha_bar_s: float, alpha_bar_t: float) -> np.ndarray:
    """The exact q(x_s | x_t) on `grid`, for data that is -1 or +1 with equal probability (s before t).

    Bayes' rule on the grid: q(x_s | x_t) is proportional to q(x_t | x_s) q(x_s), with the prior
    q(x_s) = (N(-sqrt(ab_s), 1 - ab_s) + N(+sqrt(ab_s), 1 - ab_s)) / 2 and the jump
    q(x_t | x_s) = N(sqrt(ab_t / ab_s) x_s, 1 - ab_t / ab_s), ab = alpha-bar. Normalised on the grid.
    """
    if not 0 < alpha_bar_t < alpha_bar_s < 1:
        raise ValueError(f"need 0 < alpha_bar_t < alpha_bar_s < 1, got {alpha_bar_t} and {alpha_bar_s}")
    grid = np.asarray(grid, dtype=np.float64)
    prior = sum(_normal_pdf(grid, sign * np.sqrt(alpha_bar_s), 1 - alpha_bar_s) for sign in (-1, 1)) / 2
    ratio = alpha_bar_t / alpha_bar_s
    density = prior * _normal_pdf(xt, np.sqrt(ratio) * grid, 1 - ratio)
    return density / np.trapezoid(density, grid)


def distance_to_gaussian(grid: np.ndarray, density: np.ndarray) -> float:
    """Total variation distance between `density` on `grid` and the Gaussian of the same mean and variance."""
    mean = np.trapezoid(grid * density, grid)
    variance = np.trapezoid((grid - mean) ** 2 * density, grid)
    return 0.5 * np.trapezoid(np.abs(density - _normal_pdf(grid, mean, variance)), grid)
