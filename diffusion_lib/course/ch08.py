"""Chapter 8 helpers: flow models on two moons, their paths in 2-D, straightness, and DDIM as Euler."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from ..continuous import flow_derivative, flow_times, flow_velocity, ode_sample
from ..distill import straightness
from ..models import as_eps_model
from ..pipeline import generate
from ..samplers import ddim_timesteps, sample_loop
from ..schedules import make_schedule
from ..training import TrainConfig, train
from .plots import to_numpy_image


def train_moons(objective: str = "flow", steps: int = 2000, seed: int = 0, **fields):
    """(model, info): an MLP denoiser on two moons, trained in memory (a few seconds), with its checkpoint info.
    `fields`: more `TrainConfig` fields, such as ct's `ct_grid`."""
    config = TrainConfig(data="moons", objective=objective, steps=steps, batch_size=256, lr=2e-3, seed=seed, **fields)
    result = train(config, progress=False)
    return result.ema_model, {**config.info(), "step": result.step}


def flow_paths(model, noise: torch.Tensor, steps: int, times: list[float] | None = None):
    """The points an Euler solver of the flow ODE visits from `noise` and those times: ([x, ...], [s, ...]).

    The times are `steps` even steps from 1 to 0, or `times` (decreasing, ending at 0) when given.
    """
    visited = []
    grid = flow_times(steps) if times is None else torch.tensor(times, dtype=torch.float64)
    with torch.no_grad():
        end = ode_sample(flow_derivative(lambda x, s: flow_velocity(model, x, s)), noise, grid, heun=False,
                         trajectory=visited)
    return [x for _, x in visited] + [end], [tau for tau, _ in visited] + [0.0]


def ddpm_paths(model, info: dict, noise: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[float]]:
    """A DDPM-trained model's DDIM path from `noise`, in the flow's coordinates x_s = x_t / (a + b), s = b / (a + b)
    (a = sqrt(alpha-bar), b = sqrt(1 - alpha-bar)): the same points chapter 8 shows DDIM and Euler share."""
    schedule = make_schedule(info["schedule"], info["T"])
    eps_fn = as_eps_model(model, schedule, info["prediction"], with_x0=True)
    end, trajectory = sample_loop(eps_fn, noise.shape, schedule, "ddim", steps, x_T=noise, return_trajectory=True)
    a, b = schedule.alpha_bars.sqrt(), (1 - schedule.alpha_bars).sqrt()
    xs = [x / float(a[t] + b[t]) for x, t in zip(trajectory.xs, trajectory.timesteps)]
    return xs + [end], [float(b[t] / (a[t] + b[t])) for t in trajectory.timesteps] + [0.0]


def ddim_flow_times(info: dict, steps: int) -> list[float]:
    """The flow times s = sigma / (1 + sigma) of DDIM's `steps` timesteps on the model's schedule, then 0."""
    schedule = make_schedule(info["schedule"], info["T"])
    ab = schedule.alpha_bars[ddim_timesteps(info["T"], steps)]
    return (((1 - ab) / ab).sqrt() / (1 + ((1 - ab) / ab).sqrt())).tolist() + [0.0]


def ddim_against_euler(model, info: dict, steps: int, n: int = 8, seed: int = 0) -> dict:
    """DDIM (library `sample_loop` on the flow model turned into a noise predictor) and Euler on the flow ODE at the
    same noise levels, from the same noise: their largest difference, and the size of the samples, for comparison."""
    schedule = make_schedule(info["schedule"], info["T"])
    shape = (n, *([model.config.image_channels, model.config.image_size or 28, model.config.image_size or 28]
                  if hasattr(model.config, "image_channels") else [model.config.data_dim]))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    ddim = sample_loop(as_eps_model(model, schedule, info["prediction"], with_x0=True), shape, schedule, "ddim", steps,
                       x_T=x_T)
    times = ddim_flow_times(info, steps)
    ab = float(schedule.alpha_bars[ddim_timesteps(info["T"], steps)[0]])
    start = x_T / (ab**0.5 + (1 - ab) ** 0.5)  # x_s = x_t / (a + b) at the first time
    with torch.no_grad():
        euler = ode_sample(flow_derivative(lambda x, s: flow_velocity(model, x, s)), start,
                           torch.tensor(times, dtype=torch.float64), heun=False)
    return {"max_difference": float((ddim - euler).abs().max()), "sample_scale": float(ddim.abs().max())}


def mnist_paths(model, n: int = 256, steps: int = 64, seed: int = 0):
    """n Euler paths of an MNIST flow model from seeded noise: ([x, ...], [s, ...]), as `flow_paths`."""
    noise = torch.randn((n, model.config.image_channels, 28, 28), generator=torch.Generator().manual_seed(seed))
    return flow_paths(model, noise, steps)


def mnist_straightness(model, n: int = 256, steps: int = 64, seed: int = 0) -> dict:
    """Straightness S (distill.straightness) of n Euler paths of an MNIST flow model from seeded noise."""
    return {"straightness": straightness(*mnist_paths(model, n, steps, seed)), "n": n, "steps": steps}


def squared_distances(data: torch.Tensor, n: int = 500, seed: int = 0) -> dict:
    """Mean squared distance from a noise draw to a data point, and between two data points (n pairs each)."""
    generator = torch.Generator().manual_seed(seed)
    a, b = (data[torch.randint(0, len(data), (n,), generator=generator)].flatten(1) for _ in range(2))
    noise = torch.randn(a.shape, generator=generator)
    return {"noise_to_data": float(((noise - a) ** 2).sum(1).mean()), "data_to_data": float(((a - b) ** 2).sum(1).mean())}


def paths_figure(panels: list[tuple[str, list[torch.Tensor]]], data: torch.Tensor, show: int = 40) -> Figure:
    """2-D paths side by side: each panel (title, points visited) over the data in grey; starts are dots, ends crosses."""
    fig = Figure(figsize=(3.3 * len(panels), 3.3), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, xs) in zip(axes, panels):
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.8")
        path = torch.stack(xs)[:, :show]  # (points, paths, 2)
        for j in range(path.shape[1]):
            ax.plot(path[:, j, 0], path[:, j, 1], lw=0.8, c="tab:blue", alpha=0.7)
        ax.scatter(path[0, :, 0], path[0, :, 1], s=6, c="k")
        ax.scatter(path[-1, :, 0], path[-1, :, 1], s=12, c="tab:red", marker="x")
        ax.set(title=title, xlim=(-3, 3), ylim=(-3, 3), xticks=[], yticks=[])
        ax.set_aspect("equal")
    return fig


def steps_view(steps: int, moons: dict, mnist: dict, data: torch.Tensor, n_paths: int = 40, n_images: int = 8,
               seed: int = 0) -> Figure:
    """The widget's view: for each model (independent pairs, reflow, minibatch OT), its Euler paths on two moons and
    its MNIST samples at `steps` steps, from the same noise. `moons` and `mnist`: label -> model (2-D) and
    label -> (model, info)."""
    noise = torch.randn((n_paths, 2), generator=torch.Generator().manual_seed(seed))
    fig = Figure(figsize=(3.2 * len(moons) + 0.2, 5.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3, 1.6])
    axes = top.subplots(1, len(moons), squeeze=False)[0]
    for ax, (label, model) in zip(axes, moons.items()):
        xs, _ = flow_paths(model, noise, steps)
        path = torch.stack(xs)
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.8")
        for j in range(n_paths):
            ax.plot(path[:, j, 0], path[:, j, 1], lw=0.8, c="tab:blue", alpha=0.7, marker=".", ms=3)
        ax.scatter(path[-1, :, 0], path[-1, :, 1], s=12, c="tab:red", marker="x")
        ax.set(title=f"{label}: {steps} Euler step{'s' if steps > 1 else ''}", xlim=(-3, 3), ylim=(-3, 3), xticks=[],
               yticks=[])
        ax.set_aspect("equal")
    rows = bottom.subplots(len(mnist), n_images, squeeze=False)
    for r, (label, (model, info)) in enumerate(mnist.items()):
        samples, _ = generate(model, info, n_images, "euler", steps, seed=seed)
        for c in range(n_images):
            rows[r, c].imshow(to_numpy_image(samples[c]), cmap="gray", vmin=0, vmax=1)
            rows[r, c].set_xticks([])
            rows[r, c].set_yticks([])
        rows[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    return fig
