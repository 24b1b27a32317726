"""Chapter 3 helpers: the noise-prediction slider's view, a model's error across timesteps, the weight
that turns the variational bound into an eps MSE, and the log-density of a noised finite data set.

Code timestep `t` in 0..T-1 is the paper's t+1 (see `schedules`); `ab` is alpha-bar_t.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from ..forward import q_sample, x0_from_eps
from ..schedules import Schedule
from .plots import to_numpy_image


def denoise_view(t: int, x0: torch.Tensor, noise: torch.Tensor, eps_fns: dict, schedule: Schedule) -> Figure:
    """One row per denoiser: x_t, the true eps, its predicted eps, its x0_hat, and the clean x0, for one image x0 (1, C, H, W).

    The titles give the MSE of the predicted eps against the true one and of x0_hat against x0.
    """
    steps = torch.full((1,), t)
    xt = q_sample(x0, steps, schedule, noise)
    fig = Figure(figsize=(11, 2.4 * len(eps_fns) + 0.4), layout="constrained")
    axes = fig.subplots(len(eps_fns), 5, squeeze=False)
    for row, (name, eps_fn) in zip(axes, eps_fns.items()):
        with torch.no_grad():
            eps = eps_fn(xt, steps)
        x0_hat = x0_from_eps(xt, steps, eps, schedule).clamp(-1, 1)
        eps_error, x0_error = (eps - noise).pow(2).mean().item(), (x0_hat - x0).pow(2).mean().item()
        panels = ((xt, "x_t"), (noise / 3, "true eps"), (eps / 3, f"{name} eps (MSE {eps_error:.3f})"),
                  (x0_hat, f"x0_hat (MSE to x0 {x0_error:.3f})"), (x0, "clean x0"))
        for ax, (image, title) in zip(row, panels):
            ax.imshow(to_numpy_image(image), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle(f"t = {t}, alpha-bar_t = {schedule.alpha_bars[t]:.3f}")
    return fig


@torch.no_grad()
def eps_error_by_timestep(eps_fn, x0: torch.Tensor, schedule: Schedule, timesteps, generator=None) -> list[float]:
    """Mean squared error of eps_fn's noise prediction at each timestep, over the batch x0 (the loss by t)."""
    errors = []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        steps = torch.full((len(x0),), int(t))
        errors.append((eps_fn(q_sample(x0, steps, schedule, noise), steps) - noise).pow(2).mean().item())
    return errors


def plot_error_by_timestep(timesteps, errors: dict[str, list[float]], ylabel: str, title: str) -> None:
    """One curve per denoiser of its noise-prediction error against t (log scale)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, values in errors.items():
        ax.plot(timesteps, values, "o-", label=name)
    ax.set(xlabel="t", ylabel=ylabel, yscale="log", title=title)
    ax.legend()
    plt.show()


def bound_weight(schedule: Schedule, variance: torch.Tensor | None = None) -> torch.Tensor:
    """(T,) float64: the weight w_t with L_{t-1} = w_t ||eps - eps_theta||^2. DDPM Eq. 12.

    w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha-bar_t)), where sigma_t^2 (`variance`, (T,)) is the
    variance of the model's reverse step; by default the posterior's, beta-tilde_t, so that the KL
    between the two Gaussians is exactly w_t ||eps - eps_theta||^2. With beta-tilde_t the weight at
    code t = 0 (the paper's t = 1, whose term is the decoder L_0, not a KL) is infinite.
    """
    sigma2 = schedule.posterior_variance if variance is None else variance.to(torch.float64)
    return schedule.betas**2 / (2 * sigma2 * schedule.alphas * (1 - schedule.alpha_bars))


def mixture_log_density(xt: torch.Tensor, t: torch.Tensor, data: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """log p_t(x_t) for x_0 uniform over `data` (N, ...): a mixture of N Gaussians N(sqrt(ab) x^(i), (1 - ab) I).

    log p_t(x_t) = logsumexp_i(-||x_t - sqrt(ab) x^(i)||^2 / (2 (1 - ab))) - log N - D/2 log(2 pi (1 - ab)).
    xt (B, ...), t (B,) -> (B,). Differentiable in xt, so autograd gives the score grad log p_t(x_t).
    """
    schedule.check_timesteps(t)
    ab = schedule.at("alpha_bars", t, xt.flatten(1))  # (B, 1)
    flat_xt, flat_data = xt.flatten(1), data.flatten(1).to(xt)  # (B, D), (N, D)
    sq_dist = ((flat_xt[:, None, :] - ab.sqrt()[:, :, None] * flat_data[None]) ** 2).sum(-1)  # (B, N)
    dim = flat_xt.shape[1]
    return (torch.logsumexp(-sq_dist / (2 * (1 - ab)), dim=1) - math.log(len(flat_data))
            - dim / 2 * torch.log(2 * math.pi * (1 - ab[:, 0])))
