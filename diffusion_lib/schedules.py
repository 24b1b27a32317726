"""Noise schedules: every per-timestep constant of a diffusion model, in one object.

Code name -> paper symbol (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "Improved DDPM"):

| code                   | symbol                         |
| ---------------------- | ------------------------------ |
| `betas[t]`             | beta_t                         |
| `alphas[t]`            | alpha_t = 1 - beta_t           |
| `alpha_bars[t]`        | alpha-bar_t = prod_{s<=t} alpha_s |
| `alpha_bars_prev[t]`   | alpha-bar_{t-1} (1 at the first step) |
| `posterior_variance[t]`| beta-tilde_t (DDPM Eq. 7)      |
| `snr[t]`               | alpha-bar_t / (1 - alpha-bar_t) |
| `sqrt_alpha_bars[t]`, `sqrt_one_minus_alpha_bars[t]` | sqrt(alpha-bar_t), sqrt(1 - alpha-bar_t) |
| `posterior_coef_x0[t]`, `posterior_coef_xt[t]` | the two coefficients of the posterior mean (DDPM Eq. 7) |

Timestep convention, used everywhere in this library: code index `t` runs over
0, 1, ..., T-1 and stands for the paper's t+1. So `xt` at code `t = 0` is the
paper's x_1, the least noisy latent, and "the step before t = 0" is the data x_0
itself, whose alpha-bar is 1.

All constants are computed in float64 (as in improved-diffusion) and converted to
the dtype and device of the tensor they multiply, at the moment they are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    """Immutable per-timestep constants of a T-step diffusion. Build with `make_schedule`."""

    name: str
    betas: torch.Tensor  # (T,) float64

    def __post_init__(self):
        betas = self.betas
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie strictly between 0 and 1")
        betas = betas.to(torch.float64).clone()
        betas.requires_grad_(False)
        object.__setattr__(self, "betas", betas)

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alpha_bars_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """beta-tilde_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) * beta_t. DDPM Eq. 7."""
        return (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars) * self.betas

    @property
    def sqrt_alpha_bars(self) -> torch.Tensor:
        return self.alpha_bars.sqrt()

    @property
    def sqrt_one_minus_alpha_bars(self) -> torch.Tensor:
        return (1.0 - self.alpha_bars).sqrt()

    @property
    def posterior_coef_x0(self) -> torch.Tensor:
        """beta_t sqrt(alpha-bar_{t-1}) / (1 - alpha-bar_t), the weight of x_0 in the posterior mean. DDPM Eq. 7."""
        return self.betas * self.alpha_bars_prev.sqrt() / (1.0 - self.alpha_bars)

    @property
    def posterior_coef_xt(self) -> torch.Tensor:
        """(1 - alpha-bar_{t-1}) sqrt(alpha_t) / (1 - alpha-bar_t), the weight of x_t in the posterior mean. DDPM Eq. 7."""
        return (1.0 - self.alpha_bars_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bars)

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t) (Kingma et al. 2021)."""
        return self.alpha_bars / (1.0 - self.alpha_bars)

    def at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Gather constant `name` at timesteps `t` (B,), shaped (B, 1, ..., 1) to broadcast against `like`."""
        values = getattr(self, name)[t.to("cpu")]  # float64: formed in float64, cast once here
        values = values.to(dtype=like.dtype if like.is_floating_point() else torch.float32)
        return values.to(like.device).reshape(-1, *([1] * (like.ndim - 1)))

    def check_timesteps(self, t: torch.Tensor, allow_minus_one: bool = False) -> None:
        """Raise a ValueError naming the valid range if any timestep is outside it."""
        low = -1 if allow_minus_one else 0
        if t.dtype.is_floating_point:
            raise TypeError(f"timesteps must be integers (torch.long), got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < low or int(t.max()) > self.T - 1):
            raise ValueError(
                f"timestep out of range: got values in [{int(t.min())}, {int(t.max())}], "
                f"but this schedule has T={self.T}, so t must lie in [{low}, {self.T - 1}]"
            )


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM Section 4: betas rising linearly from 1e-4 to 0.02 over T=1000 steps.

    For other T the end points are rescaled by 1000 / T so the total noise stays comparable
    (clipped at 0.999 for very short chains).
    """
    scale = 1000.0 / T
    betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
    return betas.clamp(max=0.999)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM Eq. 17: alpha-bar_t = f(t) / f(0), f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2.

    betas_t = 1 - alpha-bar_t / alpha-bar_{t-1}, clipped at 0.999 to avoid a singularity at t = T.
    """
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bars = f / f[0]
    betas = 1.0 - alpha_bars[1:] / alpha_bars[:-1]
    return betas.clamp(max=max_beta)


def make_schedule(name: str = "linear", T: int = 1000) -> Schedule:
    """Build the named schedule ("linear" or "cosine") with T steps."""
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
    if name == "linear":
        return Schedule("linear", linear_betas(T))
    if name == "cosine":
        return Schedule("cosine", cosine_betas(T))
    raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
