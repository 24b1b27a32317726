"""Chapter 4 helpers: a live loss plot for the training loop, the training-snapshot slider's view, the loss by noise level,
and a folder of images to train on (section 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..checkpoint import load_model
from ..continuous import LOGIT_MEAN, LOGIT_STD, flow_loss
from ..objectives import OBJECTIVES, objective_of
from ..pipeline import generate
from ..schedules import make_schedule
from ..training import diffusion_loss
from .plots import show_grid


class LiveLossPlot:
    """A `train(..., callback=...)` callback that redraws the loss curve every `every` steps in one output."""

    def __init__(self, every: int = 50, title: str = "training loss"):
        from IPython.display import display

        self.every, self.title = every, title
        self.handle = display(self.figure([]), display_id=True)

    def figure(self, losses: list[float]) -> Figure:
        fig = Figure(figsize=(6, 3), layout="constrained")
        ax = fig.subplots()
        if losses:
            ax.plot(np.arange(1, len(losses) + 1), losses, alpha=0.3, label="per step")
            window = min(50, len(losses))
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(window, len(losses) + 1), smooth, label=f"mean of {window} steps")
            ax.legend()
        ax.set(xlabel="step", ylabel="loss", yscale="log", title=self.title)
        return fig

    def __call__(self, step: int, loss: float, result) -> None:
        if step % self.every == 0 and self.handle is not None:  # None outside a notebook
            self.handle.update(self.figure(result.losses))


def snapshot_samples(snapshot_files, n: int = 16, steps: int | None = None, seed: int = 0,
                     sampler: str | None = None) -> dict[int, torch.Tensor]:
    """{training step: n samples from that snapshot}, all from the same starting noise.

    `sampler`, `steps`: None takes the model's default (`objectives.Objective.sampler`: Heun-18 for flow).
    """
    samples = {}
    for path in snapshot_files:
        model, info = load_model(path)
        samples[info["step"]] = generate(model, info, n, sampler, steps, seed=seed)[0]
    return samples


def snapshot_view(samples: dict[int, torch.Tensor], step: int) -> Figure:
    """The samples drawn from the snapshot taken at training step `step`."""
    if step not in samples:
        raise ValueError(f"no snapshot at step {step}; snapshots exist at {sorted(samples)}")
    return show_grid(samples[step], f"samples after {step} training steps (same noise for every snapshot)", ncols=8)


@torch.no_grad()
def loss_by_timestep_range(model, info: dict, x0: torch.Tensor, bins: int = 10, seed: int = 0) -> list[float]:
    """The training loss of `model` on x0, averaged within `bins` equal ranges of t (one t per image per range).

    For a flow model the ranges split its time s in [0, 1] (the loss is `continuous.flow_loss` at those s).
    """
    generator = torch.Generator().manual_seed(seed)
    objective = objective_of(info)
    if objective is OBJECTIVES["flow"]:
        losses = []
        for k in range(bins):
            s = ((k + torch.rand(len(x0), generator=generator, dtype=torch.float64)) / bins).clamp(1e-6, 1 - 1e-6)
            noise = torch.randn(x0.shape, generator=generator)
            z = ((torch.logit(s) - LOGIT_MEAN) / LOGIT_STD).float()  # the normal draw that flow_loss maps to s
            losses.append(flow_loss(model, x0, z, noise).item())  # no labels: a conditional U-Net's null class
        return losses
    if objective is not OBJECTIVES["ddpm"]:
        raise ValueError(f"loss by timestep is drawn for ddpm and flow models, not {objective.name}")
    schedule = make_schedule(info["schedule"], info["T"])
    edges = np.linspace(0, info["T"], bins + 1).astype(int)
    losses = []
    for low, high in zip(edges[:-1], edges[1:]):
        t = torch.randint(int(low), int(high), (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        losses.append(diffusion_loss(model, x0, t, noise, schedule, info["prediction"]).item())
    return losses


def gallery_figure(entries: list[dict], per_row: int = 8) -> Figure:
    """One row per case of the measured gallery (benchmarks' `gallery` section): its samples, its name and scores."""
    from .measured import decode_images
    from .plots import to_numpy_image

    fig = Figure(figsize=(1.1 * per_row + 3.4, 1.2 * len(entries)), layout="constrained")
    axes = fig.subplots(len(entries), per_row + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [3.2] + [1] * per_row})
    for row, entry in zip(axes, entries):
        if "diverged" in entry:
            label, images = f"{entry['case']}\n({entry['sampler']}): diverged", []
        else:
            score = entry["scores"][0]
            label = (f"{entry['case']}\n{entry['sampler']}: FID {score['mnist_fid'] / entry['real_baseline_fid']:.1f}x "
                     f"the floor, {100 * score['recognised']:.0f}% recognised")
            images = decode_images(entry["grid"])[:per_row]
        row[0].text(1.0, 0.5, label, ha="right", va="center", fontsize=8, transform=row[0].transAxes, wrap=True)
        for ax in row:
            ax.axis("off")
        for ax, image in zip(row[1:], images):
            ax.imshow(to_numpy_image(image), cmap="gray", vmin=0, vmax=1)
    return fig


def write_image_folder(images: torch.Tensor, folder: str | Path) -> Path:
    """Save images (N, C, H, W) in [-1, 1] as PNG files 000.png, 001.png, ... in `folder` (a stand-in for your own)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = ((images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, C, H, W)
    for i, image in enumerate(pixels):
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / f"{i:03d}.png")
    return folder


def nearest_distances(samples: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance (N,), index (N,)) of each sample's nearest image, as root-mean-square pixel distance in [-1, 1] units."""
    distances = torch.cdist(samples.flatten(1).double(), images.flatten(1).double()) / samples[0].numel() ** 0.5
    return distances.min(1)
