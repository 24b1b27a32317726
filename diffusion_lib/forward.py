"""The forward (noising) process and the conversions between what a network can predict.

Code name -> paper symbol (Ho et al. 2020, "DDPM"; Salimans & Ho 2022 for v):

| code     | symbol                                                   |
| -------- | -------------------------------------------------------- |
| `x0`     | x_0, a data point                                        |
| `xt`     | x_t, the noised latent                                   |
| `eps`    | epsilon ~ N(0, I), the noise mixed in                    |
| `x0_hat` | x-hat_0, an estimate of x_0 from x_t                     |
| `v`      | v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0    |

Code timestep `t` in 0..T-1 is the paper's t+1 (see `schedules`). Every function
takes `t` as a LongTensor of shape (B,), one timestep per batch element, and
tensors `x*` of shape (B, ...) of any trailing shape: images (B, C, H, W) or points (B, D).
"""

from __future__ import annotations

import torch

from .schedules import Schedule


def _check(schedule: Schedule, x: torch.Tensor, t: torch.Tensor) -> None:
    schedule.check_timesteps(t)
    if t.ndim != 1 or len(t) != len(x):
        raise ValueError(
            f"t must have shape (B,) with B = x.shape[0] = {len(x)}, got shape {tuple(t.shape)}; "
            "use torch.full((B,), t) for one timestep"
        )


def _alpha(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """sqrt(alpha-bar_t), formed in float64 and cast to like's dtype, shaped to broadcast."""
    return schedule.at("sqrt_alpha_bars", t, like)


def _sigma(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """sqrt(1 - alpha-bar_t), formed in float64 (1 - ab in float32 loses digits near ab = 1)."""
    return schedule.at("sqrt_one_minus_alpha_bars", t, like)


def q_step(x_prev: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor | None = None):
    """One Markov step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I). DDPM Eq. 2."""
    _check(schedule, x_prev, t)
    noise = torch.randn_like(x_prev) if noise is None else noise
    beta = schedule.at("betas", t, x_prev)
    return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * noise


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor | None = None):
    """Jump straight to x_t ~ q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I). DDPM Eq. 4.

    x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps.  Shapes: x0 (B, ...), t (B,) -> (B, ...).
    """
    _check(schedule, x0, t)
    noise = torch.randn_like(x0) if noise is None else noise
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    return schedule.at("sqrt_alpha_bars", t, x0) * x0 + schedule.at("sqrt_one_minus_alpha_bars", t, x0) * noise


def q_posterior(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """Mean and variance of q(x_{t-1} | x_t, x_0). DDPM Eqs. 6-7.

    mean = beta_t sqrt(alpha-bar_{t-1}) / (1 - alpha-bar_t) x_0
         + (1 - alpha-bar_{t-1}) sqrt(alpha_t) / (1 - alpha-bar_t) x_t,
    variance = beta-tilde_t.  Returns (mean (B, ...), variance (B, 1, ..., 1)).
    """
    _check(schedule, xt, t)
    coef_x0 = schedule.at("posterior_coef_x0", t, xt)  # each coefficient formed in float64, then cast
    coef_xt = schedule.at("posterior_coef_xt", t, xt)
    return coef_x0 * x0 + coef_xt * xt, schedule.at("posterior_variance", t, xt)


def x0_from_eps(xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule):
    """Invert Eq. 4 for x_0: x-hat_0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t). DDPM Eq. 15."""
    _check(schedule, xt, t)
    return (xt - _sigma(schedule, t, xt) * eps) / _alpha(schedule, t, xt)


def eps_from_x0(xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: Schedule):
    """Invert Eq. 4 for the noise: eps = (x_t - sqrt(alpha-bar_t) x_0) / sqrt(1 - alpha-bar_t)."""
    _check(schedule, xt, t)
    return (xt - _alpha(schedule, t, xt) * x0) / _sigma(schedule, t, xt)


def v_from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """The v target, v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0. Salimans & Ho 2022, Sec. 4."""
    _check(schedule, x0, t)
    return _alpha(schedule, t, x0) * eps - _sigma(schedule, t, x0) * x0


def eps_from_v(xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: Schedule):
    """eps = sqrt(1 - alpha-bar_t) x_t + sqrt(alpha-bar_t) v (from x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps)."""
    _check(schedule, xt, t)
    return _sigma(schedule, t, xt) * xt + _alpha(schedule, t, xt) * v


def x0_from_v(xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: Schedule):
    """x_0 = sqrt(alpha-bar_t) x_t - sqrt(1 - alpha-bar_t) v."""
    _check(schedule, xt, t)
    return _alpha(schedule, t, xt) * xt - _sigma(schedule, t, xt) * v


PREDICTIONS = ("eps", "x0", "v")


def to_eps(prediction: str, model_out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """Convert a network output of the given parametrisation ("eps", "x0" or "v") to eps."""
    if prediction == "eps":
        return model_out
    if prediction == "x0":
        return eps_from_x0(xt, t, model_out, schedule)
    if prediction == "v":
        return eps_from_v(xt, t, model_out, schedule)
    raise ValueError(f"unknown prediction type {prediction!r}: choose one of {', '.join(PREDICTIONS)}")


def training_target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """What a network of the given parametrisation learns to output for (x_0, eps, t)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_eps_x0(eps, x0, t, schedule)
    raise ValueError(f"unknown prediction type {prediction!r}: choose one of {', '.join(PREDICTIONS)}")


def to_eps_x0(prediction: str, model_out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """(eps, x0_hat) from a network output, each computed directly from what the network predicts."""
    if prediction == "eps":
        return model_out, x0_from_eps(xt, t, model_out, schedule)
    if prediction == "x0":
        return eps_from_x0(xt, t, model_out, schedule), model_out
    if prediction == "v":
        return eps_from_v(xt, t, model_out, schedule), x0_from_v(xt, t, model_out, schedule)
    raise ValueError(f"unknown prediction type {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
