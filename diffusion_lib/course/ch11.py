"""Chapter 11 helpers: two-moons clouds side by side, and the views behind the chapter's two sliders."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from ..denoisers import meanflow_times
from ..evaluation import energy_distance
from ..pipeline import generate

LIMITS = (-3, 3)


def _cloud(ax, points: torch.Tensor, data: torch.Tensor, title: str) -> None:
    ax.scatter(data[:, 0], data[:, 1], s=2, c="0.8")
    ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:blue")
    ax.set(title=title, xlim=LIMITS, ylim=LIMITS, xticks=[], yticks=[])
    ax.set_aspect("equal")


def clouds_figure(panels: dict[str, torch.Tensor], data: torch.Tensor) -> Figure:
    """One panel per entry, title -> (N, 2) points in blue over `data` in grey."""
    fig = Figure(figsize=(2.6 * len(panels), 2.9), layout="constrained")
    for ax, (title, points) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        _cloud(ax, points, data, title)
    return fig


@torch.no_grad()
def jumps(model, x0: torch.Tensor, noise: torch.Tensor, r: float, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_s, x_s - (s - r) u(x_s, r, s)): data noised to s on the straight path, and where a MeanFlow network's
    average velocity takes each point in one jump to r."""
    if not 0 <= r < s <= 1:
        raise ValueError(f"a jump needs 0 <= r < s <= 1, got r = {r} and s = {s}: choose r below s")
    x_s = (1 - s) * x0 + s * noise
    times = torch.full((len(x_s),), s, dtype=x_s.dtype)
    u = model(x_s, meanflow_times(times, torch.full_like(times, r)))
    return x_s, x_s - (s - r) * u


def field_view(model, x0: torch.Tensor, noise: torch.Tensor, r: float, s: float, arrows: int = 40) -> Figure:
    """The (r, s) slider's view: data noised to s (left), the jumps to r beside the same data noised to r, the
    jump's target (right), with `arrows` of the jumps drawn and the energy distance between the two clouds."""
    x_s, landed = jumps(model, x0, noise, r, s)
    target = (1 - r) * x0 + r * torch.roll(noise, 1, dims=0)  # the data at r, on noise independent of the jumps'
    fig = Figure(figsize=(6.4, 3.3), layout="constrained")
    left, right = fig.subplots(1, 2)
    _cloud(left, x_s, x_s[:0], f"data noised to s = {s:.2f}")
    _cloud(right, landed, target, f"one jump to r = {r:.2f}")
    for start, end in zip(x_s[:arrows], landed[:arrows]):
        right.annotate("", xy=end.tolist(), xytext=start.tolist(), arrowprops={"arrowstyle": "->", "lw": 0.5})
    fig.suptitle(f"grey: the data noised to r; energy distance of the jumps to it {energy_distance(landed, target):.4f}",
                 fontsize=9)
    return fig


def steps_view(steps: int, models: dict, data: torch.Tensor, n: int = 1000, seed: int = 0) -> Figure:
    """The steps slider's view: each model's samples at `steps` from the same noise, with the energy distance to
    `data`. `models`: label -> (model, info, sampler)."""
    panels = {}
    for label, (model, info, sampler) in models.items():
        samples, _ = generate(model, info, n, sampler, steps, seed=seed)
        panels[f"{label}\n{sampler}-{steps}: {energy_distance(samples, data):.4f}"] = samples
    return clouds_figure(panels, data)
