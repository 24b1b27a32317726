"""Sampling: the noise levels to visit, and one sampler family over any denoiser.

What `generate` runs: the levels each sampler visits (`ddpm_levels`, `karras_levels`, `flow_levels`, chosen by
`sampler_levels`) and the family `sample_ddpm`, `sample_ddim`, `sample_dpm_solver`, `sample_euler`, `sample_heun`
and `sample_consistency`, each `sample_NAME(denoiser, x, levels, generator)` over a denoiser that answers
(x0_hat, eps_hat) at any level (`denoisers`). Guidance and the network's parametrisation live in the denoiser, so
nothing here changes for them; a new sampler is one function, a row of `SAMPLER_FUNCTIONS` and `SAMPLER_GRIDS`, and
its name in `SAMPLERS` or `ODE_SAMPLERS`, all in this module. euler and heun need levels with an ODE time tau
(`karras_levels`, `flow_levels`). The papers' steps on DDPM's discrete schedule (`ddpm_step`, `ddim_step`,
`dpm_solver_step`, the timestep grids, `ddim_invert`) are in `discrete`, and re-exported here; `sample_loop` runs
the family over a chapter's hand-written `eps_fn`.

| code            | meaning                                                       |
| --------------- | ------------------------------------------------------------- |
| `Level`         | a point of the path x = alpha x_0 + sigma eps (`denoisers`)   |
| `levels`        | the points a sampler visits, from noise to the data (sigma = 0) |
| `posterior_std` | the spread of q(x_to | x, x_0), DDIM Eq. 16 with eta = 1      |
| `h`             | DPM-Solver++'s step in lambda = log(alpha / sigma)            |

Randomness comes from a `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .continuous import flow_times, karras_sigmas, ode_sample
from .denoisers import EpsFnDenoiser, Level, bound, clipped, velocity
from .discrete import ddim_invert, ddim_sigma, ddim_step, ddpm_step, dpm_solver_step  # noqa: F401 (re-exported)
from .discrete import ddim_timesteps, dpm_solver_data, dpm_solver_timesteps
from .schedules import Schedule


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
    if native is None or (sampler in ("consistency", "meanflow") and native is not flow_levels):
        need = {"consistency": "a flow model (a consistency-distilled student is one)",
                "meanflow": "a MeanFlow model (--objective meanflow)"}.get(
                    sampler, "a model trained with --objective edm or flow")
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
    derivative the denoiser gives at each level. The trajectory holds tau, x and x0_hat at the start of each step."""
    by_tau = {level.tau: level for level in levels}
    visited, x0_hats = [], []

    def derivative(x, tau):
        x0_hat, eps_hat = denoiser(x, by_tau[tau])
        if len(x0_hats) < len(visited):  # the first call of a step, at the x it starts from (not Heun's correction)
            x0_hats.append(x0_hat)
        return velocity(x0_hat, eps_hat, by_tau[tau])

    times = torch.tensor([level.tau for level in levels], dtype=torch.float64)
    x = ode_sample(derivative, x, times, heun=heun, trajectory=visited, progress=progress)
    if trajectory is not None:
        trajectory.timesteps.extend(tau for tau, _ in visited)
        trajectory.xs.extend(v for _, v in visited)
        trajectory.x0_hats.extend(x0_hats)
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


@torch.no_grad()
def sample_meanflow(denoiser, x, levels, generator=None, trajectory=None, progress=None):
    """MeanFlow sampling (Geng et al. 2025, Alg. 2): each step jumps with the network's average velocity over it,
    x_r = x_s - (s - r) u(x_s, r, s); one call a step, deterministic, exact for a perfect u in any number of steps."""
    for level, nxt in _pairs(levels, progress):
        x0_hat, eps_hat = denoiser(x, replace(level, to=nxt))
        _record(trajectory, level, x, x0_hat)
        x = nxt.alpha * x0_hat + nxt.sigma * eps_hat
    return x


# name -> its function; name -> (default steps, DDPM timestep grid, or None for the network's own path)
SAMPLER_FUNCTIONS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpm-solver++": sample_dpm_solver,
                     "heun": sample_heun, "euler": sample_euler, "consistency": sample_consistency,
                     "meanflow": sample_meanflow}
SAMPLER_GRIDS = {"ddpm": (None, ddim_timesteps), "ddim": (50, ddim_timesteps),
                 "dpm-solver++": (20, dpm_solver_timesteps), "heun": (18, None), "euler": (18, None),
                 "consistency": (1, None), "meanflow": (1, None)}
SAMPLERS = ("ddpm", "ddim", "dpm-solver++")  # on DDPM's discrete steps
ODE_SAMPLERS = ("heun", "euler", "consistency", "meanflow")  # on a network's continuous path
ALL_SAMPLERS = SAMPLERS + ODE_SAMPLERS


def check_eta(name: str, eta: float) -> None:
    """eta (DDIM's stochasticity) is an option of the ddim sampler alone."""
    if eta and name != "ddim":
        raise ValueError("eta applies to the ddim sampler only (--eta is for --sampler ddim only)")


def network_calls(name: str, steps: int) -> int:
    """Network evaluations per image of `steps` steps: Heun's method makes 2N - 1 (no correction on the last step),
    the others N."""
    return 2 * steps - 1 if name == "heun" else steps


def sample(name: str, denoiser, x, levels, generator=None, eta: float = 0.0, trajectory=None, progress=None):
    """Run the sampler called `name` (eta: ddim only)."""
    check_eta(name, eta)
    options = {"eta": eta} if name == "ddim" else {}
    return SAMPLER_FUNCTIONS[name](denoiser, x, levels, generator, trajectory, progress, **options)


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
