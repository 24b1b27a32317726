"""Exact denoisers: the best possible noise predictors for data sets we can write down.

For a finite data set {x^(1), ..., x^(N)} and x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps,
the posterior over which point was noised is a softmax (Karras et al. 2022, Eq. 57 and App. B.3):

    p(i | x_t) = softmax_i( -||x_t - sqrt(ab) x^(i)||^2 / (2 (1 - ab)) )
    E[x_0 | x_t] = sum_i p(i | x_t) x^(i)

and the eps it implies is (x_t - sqrt(ab) E[x_0 | x_t]) / sqrt(1 - ab). A network trained to
perfection on the finite set would output exactly this, and sampling with it can only
reproduce training points: memorisation. For a Gaussian data set N(mu, s^2 I) the posterior
mean is linear in x_t: E[x_0 | x_t] = mu + sqrt(ab) s^2 / (ab s^2 + 1 - ab) (x_t - sqrt(ab) mu).

Code timestep `t` in 0..T-1 is the paper's t+1 (see `schedules`). Here `ab` is alpha-bar_t.
"""

from __future__ import annotations

import torch

from .forward import eps_from_x0
from .schedules import Schedule


def ideal_x0(xt: torch.Tensor, t: torch.Tensor, data: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """E[x_0 | x_t] for x_0 uniform over `data` (N, ...). xt (B, ...), t (B,) -> (B, ...)."""
    if data.shape[1:] != xt.shape[1:]:
        raise ValueError(f"data points have shape {tuple(data.shape[1:])} but xt has {tuple(xt.shape[1:])}")
    schedule.check_timesteps(t)
    alpha_bar = schedule.at("alpha_bars", t, xt.flatten(1))  # (B, 1)
    flat_data = data.flatten(1).to(xt)  # (N, D)
    sq_dist = (
        (xt.flatten(1) ** 2).sum(1, keepdim=True)
        - 2 * alpha_bar.sqrt() * xt.flatten(1) @ flat_data.T
        + alpha_bar * (flat_data**2).sum(1)[None, :]
    )  # (B, N) = ||x_t - sqrt(ab) x^(i)||^2
    weights = torch.softmax(-sq_dist / (2 * (1 - alpha_bar)), dim=1)  # (B, N)
    return (weights @ flat_data).reshape(xt.shape)


def ideal_eps_fn(data: torch.Tensor, schedule: Schedule):
    """`eps_fn(xt, t)` of the exact denoiser for the finite data set `data`."""

    def eps_fn(xt, t):
        return eps_from_x0(xt, t, ideal_x0(xt, t, data, schedule), schedule)

    return eps_fn


def gaussian_x0(xt: torch.Tensor, t: torch.Tensor, mean: torch.Tensor, var: float, schedule: Schedule):
    """E[x_0 | x_t] for x_0 ~ N(mean, var I): the linear posterior mean above."""
    alpha_bar = schedule.at("alpha_bars", t, xt)
    gain = alpha_bar.sqrt() * var / (alpha_bar * var + 1 - alpha_bar)
    return mean + gain * (xt - alpha_bar.sqrt() * mean)


def gaussian_eps_fn(mean: torch.Tensor, var: float, schedule: Schedule):
    """`eps_fn(xt, t)` of the exact denoiser for Gaussian data N(mean, var I)."""

    def eps_fn(xt, t):
        return eps_from_x0(xt, t, gaussian_x0(xt, t, mean, var, schedule), schedule)

    return eps_fn
