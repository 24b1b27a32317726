"""Reverse-process samplers: the papers' steps, the noise levels to visit, and one sampler family.

Code name -> paper symbol (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"; Lu et al. 2022, "DPM-Solver++"):

| code            | symbol                                                        |
| --------------- | ------------------------------------------------------------- |
| `eps`           | epsilon_theta(x_t, t), the network's noise prediction         |
| `x0_hat`        | predicted x_0 (DDIM Eq. 12, first term)                       |
| `t`, `t_prev`   | tau_i and tau_{i-1} of a DDIM subsequence; `t_prev = -1` is x_0 |
| `sigma_t`       | sigma_tau_i(eta), DDIM Eq. 16                                 |
| `_lambda(ab)`   | lambda_t = log(alpha_t / sigma_t), half the log-SNR (DPM-Solver++) |
| `h`             | lambda_{t_i} - lambda_{t_{i-1}}, the step in lambda           |
| `Level`         | a point of the path x = alpha x_0 + sigma eps (`denoisers`)   |

The first part holds the steps in the papers' form, over an `eps_fn(xt, t) -> eps` callable on DDPM's
integer steps (`t` a LongTensor (B,)): `ddpm_step`, `ddim_step`, `dpm_solver_step`; chapters 2-5 build
them by hand. An `eps_fn` may instead return the pair (eps, x0_hat) when its network predicts x_0 (or v)
directly (`models.as_eps_model(..., with_x0=True)`); the steps then use that x0_hat rather than inverting
Eq. 4, which loses precision where alpha-bar is near 0.

The second part is what `generate` runs: the levels each sampler visits (`ddpm_levels`, `karras_levels`,
`flow_levels`, chosen by `sampler_levels`) and the family `sample_ddpm`, `sample_ddim`, `sample_dpm_solver`,
`sample_euler`, `sample_heun` and `sample_consistency`, each `sample_NAME(denoiser, x, levels, generator)`
over a denoiser that answers (x0_hat, eps_hat) at any level (`denoisers`). Guidance and the network's
parametrisation live in the denoiser, so nothing here changes for them; a new sampler is one function, a row
of `SAMPLER_FUNCTIONS` and `SAMPLER_GRIDS`, and its name in `SAMPLERS` or `ODE_SAMPLERS`, all in this module.
euler and heun need levels with an ODE time tau (`karras_levels`, `flow_levels`). `tests/test_denoisers.py` checks the family against the
papers' steps. Code timestep `t` in 0..T-1 is the paper's t+1 (see `schedules`).
Randomness comes from a `torch.Generator` or an explicit `noise=` tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .continuous import flow_times, karras_sigmas, ode_sample
from .denoisers import EpsFnDenoiser, Level, bound, clipped, velocity
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


@dataclass
class Trajectory:
    """What a sampling loop visited: `xs[i]` is the latent before step i, `x0_hats[i]` its prediction."""

    timesteps: list[int] = field(default_factory=list)
    xs: list[torch.Tensor] = field(default_factory=list)
    x0_hats: list[torch.Tensor] = field(default_factory=list)


def sample_loop(eps_fn, shape, schedule: Schedule, sampler="ddim", steps=None, eta=0.0, generator=None,
                device="cpu", x_T=None, clip_x0=False, return_trajectory=False, progress=None):
    """Draw samples from a noise predictor `eps_fn(x_t, t)` on `schedule` with "ddpm", "ddim" or "dpm-solver++".

    "ddpm" is Algorithm 2 over all T steps (`steps` None or T). With fewer `steps` it runs the
    ancestral sampler on an evenly respaced chain (Improved DDPM Sec. 4), which is DDIM with
    eta = 1 on that subsequence. "ddim" takes `steps` (default 50) and `eta`. "dpm-solver++" is
    the deterministic second-order multistep solver (default 20 steps; one network call per step).
    `x_T` fixes the starting noise (shape `shape`); otherwise it is drawn from `generator`.
    `progress` is an optional wrapper such as `tqdm`. Returns x_0 (shape), or
    (x_0, Trajectory) when `return_trajectory` is true. The samplers are the family below, on DDPM's levels.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if sampler != "ddim" and eta != 0.0:
        raise ValueError("eta applies to the ddim sampler only (ddim with eta=1 is DDPM-like)")
    denoiser = bound(EpsFnDenoiser(eps_fn, schedule))
    denoiser = clipped(denoiser) if clip_x0 else denoiser
    x = torch.randn(shape, generator=generator, device=device) if x_T is None else x_T
    trajectory = Trajectory() if return_trajectory else None
    x = sample(sampler, denoiser, x, sampler_levels(sampler, schedule, steps), generator, eta=eta, trajectory=trajectory,
               progress=progress)
    return (x, trajectory) if return_trajectory else x


# ----------------------------------------------------------------------------------- the noise levels to visit


def ddpm_levels(schedule: Schedule, timesteps: list[int]) -> list[Level]:
    """DDPM's steps `timesteps` as levels alpha = sqrt(ab_t), sigma = sqrt(1 - ab_t), then the data (t = -1)."""
    alphas, sigmas = schedule.sqrt_alpha_bars, schedule.sqrt_one_minus_alpha_bars  # float64
    return [Level(float(alphas[t]), float(sigmas[t]), t=t) for t in timesteps] + [Level(1.0, 0.0, t=-1)]


def karras_levels(steps: int) -> list[Level]:
    """EDM's path x = x_0 + sigma eps at Karras et al.'s sigmas (`continuous.karras_sigmas`), solved in tau = sigma."""
    return [Level(1.0, sigma, tau=sigma, dalpha=0.0, dsigma=1.0) for sigma in karras_sigmas(steps).tolist()]


def flow_levels(steps: int, top: float = 1.0) -> list[Level]:
    """The straight path x_s = (1 - s) x_0 + s eps at `steps` + 1 even times s from `top` (1: pure noise) to 0,
    solved in tau = s."""
    return [Level(1.0 - s, s, tau=s, dalpha=-1.0, dsigma=1.0) for s in (top * flow_times(steps)).tolist()]


def sampler_levels(sampler: str, schedule: Schedule, steps: int | None = None, native=None) -> list[Level]:
    """The levels `sampler` visits with `steps` steps (None: its default), ending at the data.

    ddpm, ddim and dpm-solver++ walk DDPM's discrete `schedule` (any network can be asked there); heun, euler and
    consistency walk the network's own continuous path, whose grid `native(steps)` is (`karras_levels`,
    `flow_levels`; `objectives.Objective.levels`); consistency walks the straight one only.
    """
    if sampler not in SAMPLER_GRIDS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLER_GRIDS)}")
    default, grid = SAMPLER_GRIDS[sampler]
    if grid is not None:  # default None: every step (DDPM's Algorithm 2)
        default = schedule.T if default is None else min(default, schedule.T)
        return ddpm_levels(schedule, grid(schedule.T, default if steps is None else steps))
    if native is None or (sampler == "consistency" and native is not flow_levels):
        need = "a flow model (a consistency-distilled student is one)" if sampler == "consistency" else \
            "a model trained with --objective edm or flow"
        raise ValueError(f"the {sampler} sampler needs {need}, not one of DDPM's discrete steps"
                         f"{' or EDM' if native is not None else ''}: use --sampler ddim or dpm-solver++")
    return native(default if steps is None else steps)


def start_noise(levels: list[Level], shape, generator=None, device="cpu") -> torch.Tensor:
    """Noise to start from: N(0, I) for DDPM's chain (its prior, Algorithm 2) and the flow (alpha = 0 at s = 1),
    sigma_max N(0, I) for EDM's path (the x_0 it still holds is negligible there, EDM Algorithm 1)."""
    std = 1.0 if levels[0].t is not None else levels[0].sigma
    return std * torch.randn(shape, generator=generator, device=device)


# ------------------------------------------------------------------------------------------ the sampler family
# Each is `sample_NAME(denoiser, x, levels, generator, trajectory=None, progress=None)`: `denoiser(x, level)` answers
# (x0_hat, eps_hat) (`denoisers`), x is the noise at levels[0], and the result is x at levels[-1], the data.


def _pairs(levels: list[Level], progress):
    pairs = list(zip(levels[:-1], levels[1:]))
    return progress(pairs) if progress else pairs


def _record(trajectory, level: Level, x, x0_hat) -> None:
    if trajectory is not None:
        trajectory.timesteps.append(level.t if level.t is not None else level.tau)
        trajectory.xs.append(x)
        trajectory.x0_hats.append(x0_hat)


def posterior_std(level: Level, to: Level) -> float:
    """The spread of q(x_to | x, x_0): sigma_to sqrt(1 - SNR / SNR_to), SNR = alpha^2 / sigma^2. DDIM Eq. 16 with
    eta = 1 (on DDPM's path: sqrt((1 - ab_to) / (1 - ab)) sqrt(1 - ab / ab_to)); 0 at the data."""
    if to.sigma == 0:
        return 0.0
    return to.sigma * math.sqrt(max(1.0 - (level.alpha * to.sigma / (to.alpha * level.sigma)) ** 2, 0.0))


@torch.no_grad()
def sample_ddim(denoiser, x, levels, generator=None, trajectory=None, progress=None, eta: float = 0.0):
    """DDIM on any Gaussian path (DDIM Eq. 12): x_to = alpha_to x0_hat + sqrt(sigma_to^2 - c^2) eps_hat + c z,
    with c = eta `posterior_std`; eta = 0 is deterministic (Euler on the probability-flow ODE, chapter 8),
    eta = 1 DDPM's ancestral step (its posterior mean and spread)."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
    for level, to in _pairs(levels, progress):
        x0_hat, eps_hat = denoiser(x, level)
        _record(trajectory, level, x, x0_hat)
        c = eta * posterior_std(level, to)
        x_to = to.alpha * x0_hat + math.sqrt(max(to.sigma**2 - c**2, 0.0)) * eps_hat
        if eta > 0:
            x_to = x_to + c * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x_to
    return x


def sample_ddpm(denoiser, x, levels, generator=None, trajectory=None, progress=None):
    """DDPM's ancestral sampling (Algorithm 2; on a respaced chain, Improved DDPM Sec. 4): `sample_ddim` with eta 1."""
    return sample_ddim(denoiser, x, levels, generator, trajectory, progress, eta=1.0)


@torch.no_grad()
def sample_dpm_solver(denoiser, x, levels, generator=None, trajectory=None, progress=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in lambda = log(alpha / sigma), h = lambda_to - lambda:
    x_to = (sigma_to / sigma) x - alpha_to (e^{-h} - 1) D, with D = x0_hat on the first step and `dpm_solver_data`'s
    second-order correction after; the last step, to the data, is first order: x_0 = x0_hat."""
    previous = None  # (the last x0_hat, its h)
    for level, to in _pairs(levels, progress):
        x0_hat, _ = denoiser(x, level)
        _record(trajectory, level, x, x0_hat)
        if to.sigma == 0:
            x = x0_hat
            continue
        h = math.log(to.alpha / to.sigma) - math.log(level.alpha / level.sigma)
        data = x0_hat if previous is None else dpm_solver_data(x0_hat, previous[0], previous[1] / h)
        x = (to.sigma / level.sigma) * x - (to.alpha * math.expm1(-h)) * data
        previous = (x0_hat, h)
    return x


def _ode(denoiser, x, levels, trajectory, progress, heun: bool):
    """Euler (or Heun) steps in tau on dx/dtau = `velocity`: `continuous.ode_sample` (EDM Algorithm 1) with the
    derivative the denoiser gives at each level. The trajectory holds tau and x before each step."""
    by_tau = {level.tau: level for level in levels}

    def derivative(x, tau):
        return velocity(*denoiser(x, by_tau[tau]), by_tau[tau])

    visited = []
    times = torch.tensor([level.tau for level in levels], dtype=torch.float64)
    x = ode_sample(derivative, x, times, heun=heun, trajectory=visited, progress=progress)
    if trajectory is not None:
        trajectory.timesteps.extend(tau for tau, _ in visited)
        trajectory.xs.extend(v for _, v in visited)
    return x


@torch.no_grad()
def sample_euler(denoiser, x, levels, generator=None, trajectory=None, progress=None):
    """Euler on the probability-flow ODE along the path's own time tau (one network call a step)."""
    return _ode(denoiser, x, levels, trajectory, progress, heun=False)


@torch.no_grad()
def sample_heun(denoiser, x, levels, generator=None, trajectory=None, progress=None):
    """Heun's second-order method (EDM Algorithm 1): N steps cost 2N - 1 network calls."""
    return _ode(denoiser, x, levels, trajectory, progress, heun=True)


@torch.no_grad()
def sample_consistency(denoiser, x, levels, generator=None, trajectory=None, progress=None):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): jump to x0_hat at each level; before every
    level but the first, noise the last estimate to it again, x = alpha x0_hat + sigma z. One call a step."""
    for i, (level, _) in enumerate(_pairs(levels, progress)):
        if i:
            x = level.alpha * x + level.sigma * torch.randn(x.shape, generator=generator, device=x.device,
                                                            dtype=x.dtype)
        x0_hat, _ = denoiser(x, level)
        _record(trajectory, level, x, x0_hat)
        x = x0_hat
    return x


# name -> its function; name -> (default steps, DDPM timestep grid, or None for the network's own path)
SAMPLER_FUNCTIONS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpm-solver++": sample_dpm_solver,
                     "heun": sample_heun, "euler": sample_euler, "consistency": sample_consistency}
SAMPLER_GRIDS = {"ddpm": (None, ddim_timesteps), "ddim": (50, ddim_timesteps),
                 "dpm-solver++": (20, dpm_solver_timesteps), "heun": (18, None), "euler": (18, None),
                 "consistency": (1, None)}
SAMPLERS = ("ddpm", "ddim", "dpm-solver++")  # on DDPM's discrete steps
ODE_SAMPLERS = ("heun", "euler", "consistency")  # on a network's continuous path
ALL_SAMPLERS = SAMPLERS + ODE_SAMPLERS


def check_eta(name: str, eta: float) -> None:
    """eta (DDIM's stochasticity) is an option of the ddim sampler alone."""
    if eta and name != "ddim":
        raise ValueError("eta applies to the ddim sampler only (--sampler ddim)")


def network_calls(name: str, steps: int) -> int:
    """Network evaluations per image of `steps` steps: Heun's method makes 2N - 1 (no correction on the last step),
    the others N."""
    return 2 * steps - 1 if name == "heun" else steps


def sample(name: str, denoiser, x, levels, generator=None, eta: float = 0.0, trajectory=None, progress=None):
    """Run the sampler called `name` (eta: ddim only)."""
    check_eta(name, eta)
    options = {"eta": eta} if name == "ddim" else {}
    return SAMPLER_FUNCTIONS[name](denoiser, x, levels, generator, trajectory, progress, **options)


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


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (Shoemake 1985; DDIM Sec. 5.3 interpolates this way).

    Gaussian noise in many dimensions lies near a sphere, so a straight line between two draws
    passes through low-norm points a sampler never saw; the great circle keeps the norm.
    """
    a, b = z0.flatten(), z1.flatten()
    theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    if theta.abs() < 1e-6:
        return (1 - alpha) * z0 + alpha * z1
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)
