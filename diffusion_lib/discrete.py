"""The papers' steps on DDPM's discrete schedule: DDPM's ancestral step, DDIM's, DPM-Solver++(2M)'s, their timesteps.

Code name -> paper symbol (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"; Lu et al. 2022, "DPM-Solver++"):

| code            | symbol                                                        |
| --------------- | ------------------------------------------------------------- |
| `eps`           | epsilon_theta(x_t, t), the network's noise prediction         |
| `x0_hat`        | predicted x_0 (DDIM Eq. 12, first term)                       |
| `t`, `t_prev`   | tau_i and tau_{i-1} of a DDIM subsequence; `t_prev = -1` is x_0 |
| `sigma_t`       | sigma_tau_i(eta), DDIM Eq. 16                                 |
| `_lambda(ab)`   | lambda_t = log(alpha_t / sigma_t), half the log-SNR (DPM-Solver++) |
| `h`             | lambda_{t_i} - lambda_{t_{i-1}}, the step in lambda           |

Each step works over an `eps_fn(xt, t) -> eps` callable on DDPM's integer steps (`t` a LongTensor (B,)), in the form
chapters 2-5 build by hand: `ddpm_step`, `ddim_step`, `dpm_solver_step`, and `ddim_invert` (image to noise). An
`eps_fn` may instead return the pair (eps, x0_hat) when its network predicts x_0 (or v) directly
(`models.as_eps_model(..., with_x0=True)`); the steps then use that x0_hat rather than inverting Eq. 4, which loses
precision where alpha-bar is near 0. `generate` samples with `samplers`' family instead, which runs the same steps
on any Gaussian path (`tests/test_denoisers.py` checks the two against each other). Code timestep `t` in 0..T-1 is
the paper's t+1 (see `schedules`). Randomness comes from a `torch.Generator` or an explicit `noise=` tensor.
"""

from __future__ import annotations

import torch

from .forward import eps_from_x0, q_posterior, x0_from_eps
from .schedules import Schedule


def _alpha_bar(schedule: Schedule, t: torch.Tensor, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """alpha-bar at code timesteps t, with alpha-bar_{-1} = 1 (the clean data), in `dtype` (default: like's)."""
    values = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bars])[t.cpu() + 1]
    return values.to(dtype or like.dtype).to(like.device).reshape(-1, *([1] * (like.ndim - 1)))


def _predict_x0(eps, xt, t, schedule, clip_x0):
    """x-hat_0 from eps (or from an (eps, x0_hat) pair), optionally clipped to [-1, 1]; returns (x0_hat, eps consistent with it)."""
    if isinstance(eps, tuple):
        eps, x0_hat = eps
    else:
        x0_hat = x0_from_eps(xt, t, eps, schedule)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps = eps_from_x0(xt, t, x0_hat, schedule)
    return x0_hat, eps


def ddpm_step(eps, xt, t, schedule: Schedule, noise=None, generator=None, clip_x0=False):
    """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t). DDPM Algorithm 2, line 4. `eps` may be an (eps, x0_hat) pair.

    Uses the posterior mean of q(x_{t-1} | x_t, x-hat_0) (DDPM Eq. 7, which equals Eq. 11's
    1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha-bar_t) eps) when x-hat_0 is not clipped) and
    sigma_t^2 = beta-tilde_t, so no noise is added at the last step (t = 0).
    Shapes: eps, xt (B, ...), t (B,). Returns (x_prev, x0_hat).
    """
    x0_hat, _ = _predict_x0(eps, xt, t, schedule, clip_x0)
    mean, variance = q_posterior(x0_hat, xt, t, schedule)
    if noise is None:
        noise = torch.randn(xt.shape, generator=generator, device=xt.device, dtype=xt.dtype)
    return mean + variance.sqrt() * noise, x0_hat


def ddim_sigma(t, t_prev, schedule: Schedule, eta: float, like: torch.Tensor) -> torch.Tensor:
    """sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev). DDIM Eq. 16."""
    alpha_bar = _alpha_bar(schedule, t, like)
    alpha_bar_prev = _alpha_bar(schedule, t_prev, like)
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()


def ddim_step(eps, xt, t, t_prev, schedule: Schedule, eta=0.0, noise=None, generator=None, clip_x0=False):
    """One DDIM step x_t -> x_{t_prev}. DDIM Eq. 12.

    x_prev = sqrt(ab_prev) x-hat_0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z.
    eta = 0 is deterministic DDIM; eta = 1 with t_prev = t - 1 is DDPM's ancestral step.
    `eps` may be an (eps, x0_hat) pair. Shapes: eps, xt (B, ...), t and t_prev (B,), t_prev = -1 for the final step to x_0.
    Returns (x_prev, x0_hat).
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
    schedule.check_timesteps(t_prev, allow_minus_one=True)
    if bool((t_prev >= t).any()):
        raise ValueError("t_prev must be smaller than t: DDIM steps go from noise towards data")
    x0_hat, eps = _predict_x0(eps, xt, t, schedule, clip_x0)
    alpha_bar_prev = _alpha_bar(schedule, t_prev, xt)
    sigma = ddim_sigma(t, t_prev, schedule, eta, xt)
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
    x_prev = alpha_bar_prev.sqrt() * x0_hat + direction
    if eta > 0:
        if noise is None:
            noise = torch.randn(xt.shape, generator=generator, device=xt.device, dtype=xt.dtype)
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


def _lambda(alpha_bar: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = log(sqrt(ab) / sqrt(1 - ab)); +inf at the clean data (ab = 1)."""
    return 0.5 * (alpha_bar.log() - (1 - alpha_bar).log())


def dpm_solver_step(x0_hat, xt, t, t_prev, schedule: Schedule, previous=None):
    """One DPM-Solver++(2M) step x_t -> x_{t_prev} from data predictions. Lu et al. 2022, Algorithm 2.

    First order (previous None, and always on the last step to t_prev = -1): the DDIM step,
    x_prev = (sigma_prev / sigma) x_t - alpha_prev (e^{-h} - 1) x0_hat.
    Second order: x0_hat is replaced by D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_before, with
    r = h_before / h, a finite-difference correction from the previous step's prediction.
    `previous` is (x0_hat_before, h_before). Returns (x_prev, (x0_hat, h)) for the next call.
    """
    schedule.check_timesteps(t_prev, allow_minus_one=True)
    alpha_bar, alpha_bar_prev = _alpha_bar(schedule, t, xt, torch.float64), _alpha_bar(schedule, t_prev, xt, torch.float64)
    h = _lambda(alpha_bar_prev) - _lambda(alpha_bar)  # > 0: lambda grows towards the data
    data = x0_hat
    if previous is not None and bool((t_prev >= 0).all()):
        x0_before, h_before = previous
        data = dpm_solver_data(x0_hat, x0_before, (h_before / h).to(xt.dtype))
    sigma_ratio = ((1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt()
    x_prev = sigma_ratio.to(xt.dtype) * xt - (alpha_bar_prev.sqrt() * torch.expm1(-h)).to(xt.dtype) * data
    return x_prev, (x0_hat, h)


def dpm_solver_data(x0_hat: torch.Tensor, x0_before: torch.Tensor, r: torch.Tensor | float) -> torch.Tensor:
    """DPM-Solver++(2M)'s corrected data prediction D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_before. Lu et al. 2022, Alg. 2.

    A finite difference of the two latest predictions extrapolates x0_hat along the ODE's path;
    r = h_before / h is the ratio of the last two steps in lambda = log(alpha / sigma).
    """
    return (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_before


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """An evenly spaced decreasing subsequence of `steps` timesteps ending at 0. DDIM Sec. 4.2."""
    if not isinstance(steps, int) or steps < 1 or steps > T:
        raise ValueError(f"steps must be an integer between 1 and T={T}, got {steps!r}")
    # round((T-1) * i / (steps-1)) hits both ends; with steps == 1 we start from the noisiest step.
    if steps == 1:
        return [T - 1]
    return sorted({round((T - 1) * i / (steps - 1)) for i in range(steps)}, reverse=True)


def dpm_solver_timesteps(T: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 down by strides of T/steps (rounded down), leaving the last stride for the jump to x_0.

    Unlike DDIM's subsequence, t = 0 is not visited: a multistep solver spends no network call on
    the nearly clean end, and its final (first-order) step goes straight to the data.
    """
    if not isinstance(steps, int) or steps < 1 or steps > T:
        raise ValueError(f"steps must be an integer between 1 and T={T}, got {steps!r}")
    # stride T / steps from T-1: distinct for every steps <= T (steps = T visits every timestep)
    return [T - 1 - (i * T) // steps for i in range(steps)]


def ddim_invert(eps_fn, x0, schedule: Schedule, steps=50):
    """Deterministic DDIM run backwards, image -> noise (DDIM Sec. 4.3; Dhariwal & Nichol 2021, App. F).

    Each step x_{t_prev} -> x_t reuses Eq. 12 with eta = 0 in the other direction, evaluating
    eps at (x_{t_prev}, t) as the usual approximation. `ddim` sampling from the result with the
    same `steps` and eta = 0 approximately gives x0 back. Returns x_T of x0's shape.
    """
    timesteps = ddim_timesteps(schedule.T, steps)[::-1]
    x = x0
    for t_prev_int, t_int in zip([-1] + timesteps[:-1], timesteps):
        t = torch.full((len(x0),), t_int, dtype=torch.long, device=x0.device)
        with torch.no_grad():
            eps = eps_fn(x, t)
        eps = eps[0] if isinstance(eps, tuple) else eps
        alpha_bar_prev = _alpha_bar(schedule, torch.full_like(t, t_prev_int), x)
        alpha_bar = _alpha_bar(schedule, t, x)
        x0_hat = (x - (1 - alpha_bar_prev).sqrt() * eps) / alpha_bar_prev.sqrt()
        x = alpha_bar.sqrt() * x0_hat + (1 - alpha_bar).sqrt() * eps
    return x
