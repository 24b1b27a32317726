"""One denoiser interface: every network answers at a noise level of the Gaussian path x = alpha x_0 + sigma eps.

DDPM, EDM and rectified flow are three ways of walking the same family of noisy images:

    DDPM   x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps     alpha = sqrt(ab_t), sigma = sqrt(1 - ab_t)
    EDM    x   = x_0 + sigma eps                         alpha = 1
    flow   x_s = (1 - s) x_0 + s eps                     alpha = 1 - s,      sigma = s

Two levels with the same ratio alpha / sigma hold the same information, up to the scale alpha + sigma or
sqrt(alpha^2 + sigma^2) of x. So one network, whatever it was trained to output, can be asked about any level:
its input is x rescaled to the network's own variables, and its output is turned into the clean-image estimate
x0_hat and the noise estimate eps_hat (`continuous` derives each change of variables). A `Denoiser` is that
wrapper, built once per checkpoint by `denoiser_for`; this is the one module that knows the parametrisations.
Samplers (`samplers`) and guidance (`guidance.guided`) only ever call it:

    x0_hat, eps_hat = denoiser(x, level, labels)

A MeanFlow network (`objectives.meanflow_loss`) answers for a whole step: asked at a level whose `to` is the next
one, it gives the pair whose point there is the jump x_r = x_s - (s - r) u(x_s, r, s), u the average velocity over
the step (`samplers.sample_meanflow`); asked at a level without `to`, the flow's own pair (r = s).

| code        | meaning                                                                  |
| ----------- | ------------------------------------------------------------------------ |
| `Level`     | a point of the path: alpha, sigma; `t` the DDPM step it is (None: between steps); `tau`, `dalpha`, `dsigma` the ODE time and the path's slopes there |
| `x0_hat`    | E[x_0 | x], the denoiser's estimate of the clean image                   |
| `eps_hat`   | the noise estimate, (x - alpha x0_hat) / sigma where sigma > 0           |
| `prediction`| what the network outputs: eps, x0 or v on DDPM's discrete steps; edm (EDM's F); flow (the velocity v) |

Each estimate is computed straight from what the network outputs, never through a division that amplifies
round-off (an x0-predicting network's x0_hat is its output, not (x - sigma eps) / alpha with alpha near 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .continuous import SIGMA_DATA, edm_denoise, flow_velocity
from .forward import PREDICTIONS, to_eps_x0
from .schedules import Schedule


@dataclass(frozen=True)
class Level:
    """A noise level x = alpha x_0 + sigma eps; `t` is its DDPM step on a discrete schedule (-1: the data, None:
    not a step); an ODE solver moves along `tau`, where d alpha / d tau = `dalpha` and d sigma / d tau = `dsigma`."""

    alpha: float
    sigma: float
    t: int | None = None
    tau: float | None = None
    dalpha: float = 0.0
    dsigma: float = 0.0
    to: Level | None = None  # a MeanFlow network's step ends there (`Denoiser._average`); None: the answer here


class Denoiser:
    """`denoiser(x, level, labels)` -> (x0_hat, eps_hat) for a network trained with `prediction` (see the module).

    `schedule` is the DDPM schedule a discrete network (eps, x0 or v) was trained on: it can be asked only at
    that schedule's steps. `edm` networks take any level with alpha > 0 and sigma > 0; `flow` ones any level.
    The pair comes back as (x0_hat, eps_hat); an `eps_fn` of chapters 3-7 returns (eps, x0_hat), the other way.
    """

    PREDICTIONS = PREDICTIONS + ("edm", "flow")  # what a network may output: see the module

    def __init__(self, net, prediction: str, schedule: Schedule | None = None, sigma_data: float = SIGMA_DATA):
        answers = dict(zip(self.PREDICTIONS, (self._ddpm,) * len(PREDICTIONS) + (self._edm, self._flow)))
        if prediction not in answers:
            raise ValueError(f"unknown prediction {prediction!r}: choose one of {', '.join(answers)}")
        if prediction in PREDICTIONS and schedule is None:
            raise ValueError(f"a network that predicts {prediction} on DDPM's steps needs the schedule it was trained on")
        self.net, self.prediction, self.schedule, self.sigma_data = net, prediction, schedule, sigma_data
        self.interval = prediction == "flow" and getattr(getattr(net, "config", None), "interval", False)
        self._answer = self._average if self.interval else answers[prediction]

    def __call__(self, x: torch.Tensor, level: Level, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
        if level.to is not None and not self.interval:
            raise ValueError("only a MeanFlow network (trained with --objective meanflow) jumps over a whole step: "
                             "use --sampler heun or euler")
        return self._answer(x, level, labels)

    def _average(self, x, level: Level, labels):
        """A MeanFlow network's pair for its average velocity u over the flow times [r, s] (s of `level`, r of
        `level.to`, or r = s without it): x0_hat = x_s - s u and eps_hat = x_s + (1 - s) u, whose point at r,
        (1 - r) x0_hat + r eps_hat, is the jump x_s - (s - r) u. The network is told (s, s - r) (`meanflow_times`)."""
        end = level if level.to is None else level.to
        r = end.sigma / (end.alpha + end.sigma)
        return flow_estimates(lambda x_s, s: self.net(x_s, meanflow_times(s, r), labels), x, level)

    def _ddpm(self, x, level: Level, labels):
        """A network of DDPM's steps: x is x_t itself (alpha^2 + sigma^2 = 1) at the step `level.t`."""
        if level.t is None or level.t < 0:
            raise ValueError(f"this network was trained on DDPM's discrete steps; it cannot be asked at {level}: use "
                             "--sampler ddim, ddpm or dpm-solver++")
        t = torch.full((len(x),), level.t, dtype=torch.long, device=x.device)
        eps, x0_hat = to_eps_x0(self.prediction, self.net(x, t, labels), x, t, self.schedule)
        return x0_hat, eps

    def _edm(self, x, level: Level, labels):
        """EDM's D(x; sigma) on x / alpha at sigma / alpha; eps_hat = (x / alpha - D) / (sigma / alpha)."""
        sigma = level.sigma / level.alpha
        x_edm = x / level.alpha
        x0_hat = edm_denoise(self.net, x_edm, torch.full((len(x),), sigma, dtype=x.dtype, device=x.device), labels,
                             self.sigma_data)
        return x0_hat, (x_edm - x0_hat) / sigma

    def _flow(self, x, level: Level, labels):
        return flow_estimates(lambda x_s, s: flow_velocity(self.net, x_s, s, labels), x, level)


def meanflow_times(s: torch.Tensor, r) -> torch.Tensor:
    """A MeanFlow network's time input (B, 2): the interval's noisier end s and its length s - r, in flow time (0 the
    data, 1 the noise), not a flow model's 1000 s: training differentiates the network along s (`objectives`), and
    the fast sinusoids of 1000 s made that derivative, and so the target, large and rough (on two moons the loss
    grew from 67 to 350 in 1,500 steps)."""
    return torch.stack([s, s - r], dim=1)


def flow_estimates(velocity, x, level: Level) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a flow's `velocity(x_s, s)` (s a (B,) tensor), asked at s = sigma / (alpha + sigma) on
    x_s = x / (alpha + sigma): x0_hat = x_s - s v and eps_hat = x_s + (1 - s) v (from x_s = (1 - s) x_0 + s eps and
    v = eps - x_0)."""
    scale = level.alpha + level.sigma
    s, x_s = level.sigma / scale, x / scale
    v = velocity(x_s, torch.full((len(x),), s, dtype=x.dtype, device=x.device))
    return x_s - s * v, x_s + (1 - s) * v


def denoiser_for(model, info, schedule: Schedule | None = None) -> Denoiser:
    """The denoiser of a checkpoint's network (`info`: its info dict, or `checkpoint.ModelInfo`): its `prediction`
    says what it outputs, its `schedule` and `T` (or `schedule`) the DDPM steps of a discrete one."""
    from .checkpoint import ModelInfo
    from .schedules import make_schedule

    meta = ModelInfo.read(info)
    return Denoiser(model, meta.prediction, schedule or make_schedule(meta.schedule, meta.T), meta.sigma_data)


class EpsFnDenoiser:
    """The denoiser of a bare noise predictor `eps_fn(x_t, t)` on `schedule` (chapters 2-6 write these by hand;
    it may return the pair (eps, x0_hat), as `models.as_eps_model(..., with_x0=True)` does)."""

    def __init__(self, eps_fn, schedule: Schedule):
        self.eps_fn, self.schedule = eps_fn, schedule

    def __call__(self, x, level: Level, labels=None):
        if level.t is None or level.t < 0:
            raise ValueError(f"a noise predictor of DDPM's discrete steps cannot be asked at {level}")
        if labels is not None:
            raise ValueError("a bare eps_fn(x, t) takes no labels: bind them into it (guidance.guided_eps_fn)")
        t = torch.full((len(x),), level.t, dtype=torch.long, device=x.device)
        out = self.eps_fn(x, t)
        if isinstance(out, tuple):
            return out[1], out[0]
        eps, x0_hat = to_eps_x0("eps", out, x, t, self.schedule)
        return x0_hat, eps


def clipped(denoiser):
    """A bound `denoiser(x, level)` with x0_hat clipped to [-1, 1], the range of pixels, and eps_hat made consistent
    with it: eps_hat = (x - alpha x0_hat) / sigma (DDPM's and DDIM's reference code clip so)."""

    def fn(x, level: Level):
        x0_hat, _ = denoiser(x, level)
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        return x0_hat, (x - level.alpha * x0_hat) / level.sigma

    return fn


def bound(denoiser, labels=None):
    """`fn(x, level)` with the labels fixed: what a sampler calls."""
    return lambda x, level: denoiser(x, level, labels)


def eps_fn_of(denoiser, schedule: Schedule):
    """A bound `denoiser(x, level)` as the noise predictor `eps_fn(x_t, t) -> (eps, x0_hat)` of DDPM's discrete
    steps, for the code of chapters 2-7 that takes one (inpainting, DDIM inversion)."""
    alphas, sigmas = schedule.sqrt_alpha_bars, schedule.sqrt_one_minus_alpha_bars

    def eps_fn(xt, t):
        step = int(t[0])
        x0_hat, eps = denoiser(xt, Level(float(alphas[step]), float(sigmas[step]), t=step))
        return eps, x0_hat

    return eps_fn


def chunked(denoiser, batch_size: int):
    """`denoiser` called on at most `batch_size` rows at a time; each row's answer depends only on that row, so the
    chunk size changes nothing but memory (the network's activations exist for one chunk at a time)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    def fn(x, level: Level, labels=None):
        if len(x) <= batch_size:
            return denoiser(x, level, labels)
        parts = [denoiser(x[i:i + batch_size], level, None if labels is None else labels[i:i + batch_size])
                 for i in range(0, len(x), batch_size)]
        return tuple(torch.cat(p) for p in zip(*parts))

    return fn


def velocity(x0_hat: torch.Tensor, eps_hat: torch.Tensor, level: Level) -> torch.Tensor:
    """dx / dtau along the path at fixed (x_0, eps): dalpha x0_hat + dsigma eps_hat, the probability-flow ODE's
    right-hand side (EDM: eps_hat = (x - D) / sigma; flow: eps_hat - x0_hat = v)."""
    return level.dalpha * x0_hat + level.dsigma * eps_hat

