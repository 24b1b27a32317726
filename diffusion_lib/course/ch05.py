"""Chapter 5 helpers: the steps-and-eta slider, the trajectory scrubber, and a steps-vs-quality table."""

from __future__ import annotations

import time

import torch
from matplotlib.figure import Figure

from ..evaluation import mnist_fid
from ..pipeline import generate
from ..samplers import Trajectory
from .plots import show_grid, to_numpy_image


def _unconditional(model, n: int) -> dict:
    """generate() arguments for the unconditional model: guidance 0 (the null label) for a conditional U-Net."""
    if not model.config.num_classes:
        return {}
    return {"guidance": 0.0, "labels": torch.zeros(n, dtype=torch.long)}


def sampler_view(steps: int, eta: float, model, info: dict, n: int = 16, seed: int = 0) -> tuple[Figure, float]:
    """n samples from DDIM with `steps` and `eta` (fixed seed), and the seconds they took."""
    start = time.perf_counter()
    samples, _ = generate(model, info, n, "ddim", steps, eta, seed=seed, **_unconditional(model, n))
    seconds = time.perf_counter() - start
    return show_grid(samples, f"DDIM, {steps} steps, eta = {eta:g}: {seconds:.2f} s for {n} images", ncols=8), seconds


def trajectory_view(trajectory: Trajectory, index: int) -> Figure:
    """The latent x_t and the model's x0_hat at step `index` of a sampling run, for its first image."""
    if not 0 <= index < len(trajectory.xs):
        raise ValueError(f"index must lie in 0..{len(trajectory.xs) - 1}, got {index}")
    fig = Figure(figsize=(5.5, 3), layout="constrained")
    axes = fig.subplots(1, 2)
    t = trajectory.timesteps[index]
    for ax, image, title in ((axes[0], trajectory.xs[index][0], f"x_t, t = {t}"),
                             (axes[1], trajectory.x0_hats[index][0].clamp(-1, 1), "x0_hat: the model's guess")):
        ax.imshow(to_numpy_image(image), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"step {index + 1} of {len(trajectory.xs)}")
    return fig


def quality_table(model, info: dict, classifier, settings, n: int, seed: int = 0) -> list[dict]:
    """For each (sampler, steps): seconds per image and MNIST-FID of n samples (unconditional mode)."""
    rows = []
    for sampler, steps in settings:
        start = time.perf_counter()
        samples, _ = generate(model, info, n, sampler, steps, seed=seed, **_unconditional(model, n))
        seconds = (time.perf_counter() - start) / n
        rows.append({"sampler": sampler, "steps": steps, "seconds_per_image": seconds,
                     "mnist_fid": mnist_fid(samples, classifier)})
    return rows


def merge_quality_tables(live: list[dict], committed: list[dict], live_n: int) -> list[dict]:
    """Rows measured here first, then the committed rows for settings not measured here, each with its `source`.

    A committed row measured here too gets `committed_fid` beside the live figure, to compare.
    """
    committed_by = {(r["sampler"], r["steps"]): r for r in committed}
    rows = [{**r, "source": f"here, n={live_n}",
             "committed_fid": committed_by.get((r["sampler"], r["steps"]), {}).get("mnist_fid")} for r in live]
    measured = {(r["sampler"], r["steps"]) for r in live}
    rows += [{**r, "source": "committed", "committed_fid": r["mnist_fid"]} for r in committed
             if (r["sampler"], r["steps"]) not in measured]
    return sorted(rows, key=lambda r: (r["sampler"], -r["steps"]))
