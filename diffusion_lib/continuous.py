"""Continuous noise levels: EDM (Karras et al. 2022) and rectified flow (Liu et al. 2022; Esser et al. 2024, "SD3").

DDPM (chapters 2-6) indexes noise by an integer step t with alpha-bar_t. The two newer families
name the same noise by a real number, and all three are one family under a change of variables:

    DDPM   x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps
    EDM    x   = x_0 + sigma eps                   with sigma = sqrt((1 - ab) / ab),  x = x_t / sqrt(ab)
    flow   x_s = (1 - s) x_0 + s eps               with s = sigma / (1 + sigma),       x_s = (1 - s) x

| code           | symbol / meaning                                                           |
| -------------- | -------------------------------------------------------------------------- |
| `sigma`        | sigma, EDM's noise level (standard deviation of the added noise)           |
| `s`            | t in [0, 1] of the flow papers (0 = data, 1 = noise); `s` here, so it is not read as DDPM's index |
| `SIGMA_DATA`   | sigma_data: sqrt(E[x_0^2]) of MNIST pixels in [-1, 1], measured (0.962); a run on other data measures its own (`TrainConfig.sigma_data`, kept in the checkpoint). EDM derives c_skip, c_out, c_in from E[x_0^2] (App. B.6), which is the variance only for zero-mean data; MNIST's mean is -0.74 and its std 0.616 |
| `c_skip`, `c_out`, `c_in`, `c_noise` | EDM's preconditioning, Table 1 and Eq. 7             |
| `P_MEAN`, `P_STD` | ln(sigma) ~ N(P_mean, P_std^2) during training (EDM Table 1)            |
| `D`            | D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), the denoiser             |
| `v`            | the flow's velocity dx_s/ds = eps - x_0                                    |

The network `F` is the same U-Net (or MLP) as DDPM's: its "timestep" input becomes a noise
label, 1000 c_noise for EDM and 1000 s for flow, so that its sinusoidal embedding, built for
steps 0..999, resolves it. `as_eps_model` turns either family into a DDPM noise predictor on
any discrete schedule, for the eps_fn code of chapters 3-7; `generate` asks the same networks through
`denoisers.Denoiser`, which makes the same change of variables at any level of the path.
"""

from __future__ import annotations

import torch

SIGMA_DATA = 0.962  # sqrt(E[x_0^2]) over all MNIST training pixels in [-1, 1] (tests/test_continuous.py measures it)
P_MEAN, P_STD = -1.2, 1.2  # EDM Table 1
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0  # EDM Eq. 5 and Table 1
LOGIT_MEAN, LOGIT_STD = 0.0, 1.0  # SD3 Sec. 3.1: s = sigmoid(N(0, 1)), "logit-normal"


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against `like`, in its dtype."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


# ------------------------------------------------------------------------------------------- EDM


def edm_preconditioning(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) at noise levels sigma (B,). EDM Table 1 ("Ours").

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4: the network's input and target
    both have unit variance at every sigma (EDM Appendix B.6).
    """
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


def edm_denoise(net, x: torch.Tensor, sigma: torch.Tensor, labels=None, sigma_data: float = SIGMA_DATA):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise). EDM Eq. 7. Shapes: x (B, ...), sigma (B,)."""
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data)
    out = net(_column(c_in, x) * x, 1000 * c_noise, labels)
    return _column(c_skip, x) * x + _column(c_out, x) * out


def edm_loss(net, x0, z, noise, labels=None, sigma_data: float = SIGMA_DATA, reduction="mean"):
    """EDM's training loss (Eq. 8 with Table 1's lambda and p_train) for standard normal draws z (B,).

    sigma = exp(P_mean + P_std z). With lambda(sigma) = 1 / c_out^2 the weighted loss
    lambda ||D - x_0||^2 equals ||F - (x_0 - c_skip x) / c_out||^2: the network regresses a
    unit-variance target with unit weight (EDM Eq. 8 rewritten, Appendix B.6).
    """
    sigma = (P_MEAN + P_STD * z).exp()
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data)
    x = x0 + _column(sigma, x0) * noise
    target = (x0 - _column(c_skip, x0) * x) / _column(c_out, x0)
    out = net(_column(c_in, x0) * x, 1000 * c_noise, labels)
    per_example = ((out - target) ** 2).flatten(1).mean(1)  # (B,)
    return per_example.mean() if reduction == "mean" else per_example


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """`steps` noise levels from sigma_max down to sigma_min, spaced evenly in sigma^(1/rho), then 0. EDM Eq. 5."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    i = torch.arange(steps, dtype=torch.float64)
    ramp = i / max(steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


# ------------------------------------------------------------------------------------------ flow


def flow_velocity(net, x: torch.Tensor, s: torch.Tensor, labels=None) -> torch.Tensor:
    """v(x_s, s): the network called with the flow's noise label 1000 s. Shapes: x (B, ...), s (B,)."""
    return net(x, 1000 * s, labels)


def flow_loss(net, x0, z, noise, labels=None, reduction="mean"):
    """Conditional flow matching with SD3's logit-normal s = sigmoid(m + s_std z) (Esser et al. 2024, Sec. 3.1).

    x_s = (1 - s) x_0 + s eps; the network regresses the velocity v = eps - x_0 with unit weight.
    """
    s = torch.sigmoid(LOGIT_MEAN + LOGIT_STD * z)
    x = _column(1 - s, x0) * x0 + _column(s, x0) * noise
    per_example = ((flow_velocity(net, x, s, labels) - (noise - x0)) ** 2).flatten(1).mean(1)  # (B,)
    return per_example.mean() if reduction == "mean" else per_example


def flow_times(steps: int) -> torch.Tensor:
    """`steps` + 1 evenly spaced times s from 1 (noise) to 0 (data)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


# -------------------------------------------------------------------------- solving the ODE


def ode_sample(derivative, x: torch.Tensor, times: torch.Tensor, heun: bool = True, trajectory=None, progress=None):
    """Integrate dx/dtau = derivative(x, tau) along `times` (decreasing, ending at 0). EDM Algorithm 1.

    Each step is Euler's x' = x + (tau' - tau) d; with `heun` it is corrected by the slope at the
    new point, x' = x + (tau' - tau) (d + d') / 2, except on the last step to tau' = 0 (EDM
    Alg. 1, line 7), so N steps cost 2N - 1 network calls (Euler: N). `trajectory`, a list,
    collects (tau, x) before each step; `progress` optionally wraps the steps (tqdm).
    """
    steps = list(zip(times[:-1].tolist(), times[1:].tolist()))
    for tau, tau_next in progress(steps) if progress else steps:
        if trajectory is not None:
            trajectory.append((tau, x))
        d = derivative(x, tau)
        x_next = x + (tau_next - tau) * d
        if heun and tau_next > 0:
            x_next = x + (tau_next - tau) * (d + derivative(x_next, tau_next)) / 2
        x = x_next
    return x


def edm_derivative(denoise):
    """dx/dsigma = (x - D(x; sigma)) / sigma, the probability-flow ODE in EDM's variables (Eq. 3 with s = 1, sigma = t)."""

    def derivative(x, sigma):
        level = torch.full((len(x),), sigma, device=x.device, dtype=x.dtype)
        return (x - denoise(x, level)) / sigma

    return derivative


def flow_derivative(velocity):
    """dx/ds = v(x, s): the rectified-flow ODE (Liu et al. 2022, Eq. 1)."""

    def derivative(x, s):
        return velocity(x, torch.full((len(x),), s, device=x.device, dtype=x.dtype))

    return derivative


# --------------------------------------------------------------- the change of variables to DDPM


def sigma_of_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - ab) / ab): the EDM noise level with the same signal-to-noise ratio as DDPM's ab."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def as_eps_model(net, schedule, objective: str, sigma_data: float = SIGMA_DATA, with_x0: bool = False):
    """`eps_model(x_t, t, labels)` on DDPM schedule `schedule` for an EDM or flow network.

    x_t = sqrt(ab) (x_0 + sigma eps), so EDM's input is x = x_t / sqrt(ab) and eps = (x - D) / sigma;
    the flow's is x_s = (1 - s) x, and x_s = (1 - s) x_0 + s eps gives eps = x_s + (1 - s) v and
    x_0 = x_s - s v. With `with_x0` it returns (eps, x0_hat), x0_hat = D or x_s - s v.
    """
    if objective not in ("edm", "flow"):
        raise ValueError(f"unknown prediction {objective!r}: choose one of eps, x0, v, edm, flow")
    alpha_bars = schedule.alpha_bars  # float64

    def eps_model(xt, t, labels=None):
        alpha_bar = alpha_bars[t.cpu()].to(xt.device)
        sigma = sigma_of_alpha_bar(alpha_bar)  # (B,) float64
        x = xt / _column(alpha_bar.sqrt(), xt)
        if objective == "edm":
            x0_hat = edm_denoise(net, x, sigma.to(xt.dtype), labels, sigma_data)
            eps = (x - x0_hat) / _column(sigma, xt)
        else:
            s = sigma / (1 + sigma)
            x_s = _column(1 - s, xt) * x
            v = flow_velocity(net, x_s, s.to(xt.dtype), labels)
            eps, x0_hat = x_s + _column(1 - s, xt) * v, x_s - _column(s, xt) * v
        return (eps, x0_hat) if with_x0 else eps

    return eps_model

