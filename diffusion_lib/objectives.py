"""The training objectives, one entry each: how a step draws its noise level, the loss, and how its models sample.

Each trains one network on the Gaussian path x = alpha x_0 + sigma eps (`denoisers`); they differ in where
on the path they put the training examples, what the network outputs there, and how each level is weighted:

| objective | noise level drawn per example              | network output        | loss                                 |
| --------- | ------------------------------------------ | --------------------- | ------------------------------------ |
| `ddpm`    | t ~ Uniform{0..T-1} of a discrete schedule | eps, x0 or v (`prediction`) | L_simple (DDPM Eq. 14) on that target, optionally min-SNR weighted |
| `edm`     | ln sigma ~ N(P_mean, P_std^2)              | EDM's F               | EDM Eq. 8 with Table 1's lambda (`continuous.edm_loss`) |
| `flow`    | s = sigmoid(z), z ~ N(0, 1)                | the velocity eps - x_0 | conditional flow matching (`continuous.flow_loss`) |
| `flow-ot` | as `flow`                                  | the velocity eps - x_0 | `flow` on the batch's noise re-paired by minibatch optimal transport (`ot_pairing`) |
| `ct`      | s_n = n / N, n ~ Uniform{1..N}, N growing over training (`ct_grid`) | the velocity eps - x_0 | consistency training without a teacher (`consistency_training_loss`) |
| `meanflow`| an interval r <= s, each end logit-normal  | the average velocity over [r, s] | MeanFlow (`meanflow_loss`): u = v - (s - r) du/ds, by a Jacobian-vector product |

| code            | meaning                                                                         |
| --------------- | ------------------------------------------------------------------------------- |
| `draw`          | `draw(B, generator, config, step)`: the draw a batch's noise levels come from, at training step `step` (a step t; a N(0, 1) z that the loss maps to sigma or s; a grid index n beside the grid's N; meanflow's interval) |
| `loss`          | `loss(net, x0, t, noise, labels, config, schedule)`: the batch's mean loss        |
| `sampler`       | the sampler and steps a model of this objective uses unless asked otherwise      |
| `levels`        | the grid its ODE samplers (heun, euler) walk on its own path; None: DDPM's steps only |
| `sigma_data`    | whether the loss uses the data's sqrt(E[x_0^2]) (EDM's preconditioning), stored per data set |
| `output`        | what a continuous objective's network outputs, as `denoisers.Denoiser` names it (edm: F; flow: the velocity) |
| `gamma`         | min-SNR-gamma's gamma = 5 (Hang et al. 2023, arXiv 2303.09556)                    |
| `CT_GRID`       | N, the grid s_n = n / N whose neighbours consistency training compares (chapter 11's fixed grid) |
| `CT_GROWTH`     | `ct`'s default grid over training: N doubles from 4 to 128 in equal stages (`ct_grid`) |
| `f`             | the consistency function f(x, s) = x - s v(x, s), the straight path's x0_hat; f(x, 0) = x |
| `ot_pairing`    | the batch's noise reordered so that sum_i ‖x0_i - eps_i‖² is least over all B! pairings |
| `model_fields`  | network config fields the objective needs (meanflow: `interval`, a second time input) |
| `meanflow_target` | u and the identity's side v - (s - r) du/ds, du/ds by one JVP (chapter 11's exercise 1) |
| `MEANFLOW_SHARE`| the share of a batch's examples with r < s (default); the rest have r = s, where the loss is flow matching's |
| `MEANFLOW_POWER`| p of the adaptive weight 1 / (e + c)^p on an example's error e, on images (0, no weight, on 2-D points) |

This is the one module that knows the objectives by name (with `training.TrainConfig.from_stored`, which reads
runs stored before there were others); adding one is one more entry here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .continuous import LOGIT_MEAN, LOGIT_STD, _column, edm_loss, flow_loss, flow_velocity
from .denoisers import meanflow_times
from .forward import q_sample, training_target
from .samplers import flow_levels, karras_levels

MIN_SNR_GAMMA = 5.0
CT_GRID = 32  # as consistency distillation's teacher_steps (`distill`), so the two compare step for step
CT_GROWTH = (4, 128)  # N at the first and the last stage of `ct` training (`ct_grid`)
MEANFLOW_SHARE = 0.25  # Geng et al. 2025 (arXiv 2505.13447), Table 1a: 25% of examples with r != s
MEANFLOW_POWER = 1.0  # the adaptive weight's p on images: Geng et al.'s choice (`meanflow_loss`)
MEANFLOW_C = 1e-3  # and its c


def diffusion_loss(model, x0, t, noise, schedule, prediction="eps", labels=None, reduction="mean", loss_weight="none"):
    """L_simple (DDPM Eq. 14) for target `prediction`; `reduction="none"` gives one loss per example (B,).

    `loss_weight="min-snr"` multiplies each example's loss by `min_snr_weight`.
    """
    xt = q_sample(x0, t, schedule, noise)
    per_example = F.mse_loss(model(xt, t, labels), training_target(prediction, x0, noise, t, schedule), reduction="none")
    per_example = per_example.flatten(1).mean(1)  # (B,)
    if loss_weight == "min-snr":
        per_example = per_example * min_snr_weight(schedule.snr[t.cpu()], prediction).to(per_example)
    return per_example.mean() if reduction == "mean" else per_example


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float = MIN_SNR_GAMMA) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023): the x_0-loss weight min(SNR, gamma) in each target's units.

    ||eps - eps_hat||^2 = SNR ||x_0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x_0 - x0_hat||^2,
    so the weights are min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0, min(SNR, gamma) / (SNR + 1) for v.
    """
    clipped = snr.clamp(max=gamma)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]


def consistency_training_loss(net, x0, n, noise, labels=None, grid=CT_GRID):
    """Consistency training without a teacher (Song et al. 2023, Alg. 3, squared L2, with iCT's stop-gradient target,
    Song & Dhariwal 2023) on the straight path: for n (B,) in 1..N, s = n / N and r = (n - 1) / N on the same noise,
    ||f(x_s, s) - sg(f(x_r, r))||^2 with f(x, s) = x - s v(x, s). At n = 1 the target f(x_0, 0) = x_0 is the data
    itself; from there agreement spreads up the grid, so that f(noise, 1) is an image: one network call.
    `grid`: N, one number or one per example (B,).
    """
    s, r = n / grid, (n - 1) / grid

    def f(x, s):
        return x - _column(s, x) * flow_velocity(net, x, s, labels)

    with torch.no_grad():
        target = f(_column(1 - r, x0) * x0 + _column(r, x0) * noise, r)
    return ((f(_column(1 - s, x0) * x0 + _column(s, x0) * noise, s) - target) ** 2).mean()


def ct_grid(step: int, steps: int, growth: tuple[int, int] = CT_GROWTH) -> int:
    """N at training step `step` of `steps`: iCT's discretisation curriculum (Song & Dhariwal 2023, Eq. 5) on our
    grid. N starts at growth[0] and doubles at floor(log2(end / start)) + 1 equal stages of training, never past
    growth[1] (which it reaches when end / start is a power of two). Song et al. (2023)'s intuition: a coarse grid's
    target is more biased but less noisy, which speeds the start; a fine grid's is less biased (chapter 11, section 5
    measures both on two moons)."""
    start, end = growth
    stages = int(math.log2(end / start)) + 1
    return min(start * 2 ** (step * stages // steps), end)


def meanflow_loss(net, x0, draw, noise, labels=None, power: float = 0.0, share: float = MEANFLOW_SHARE):
    """MeanFlow (Geng et al. 2025, Alg. 1) on the straight path x_s = (1 - s) x_0 + s eps: the network u(x, r, s)
    learns the *average* velocity over [r, s], u = (x_s - x_r) / (s - r), through the identity
    u(x_s, r, s) = v - (s - r) du/ds, where v = eps - x_0 and du/ds = v . grad_x u + d u / d s is the derivative
    along the path, one Jacobian-vector product with tangent (v, 0, 1). The target is held fixed (no gradient).

    `draw` (B, 3): two N(0, 1) draws and a uniform one. For `share` of the batch (uniform draw below it) the
    two draws, made logit-normal times, are the interval's ends (the larger is s); for the rest r = s is the first
    draw's time alone, so those examples are exactly flow matching's (`continuous.flow_loss`, same times, same
    target v) and skip the JVP, whose term (s - r) du/ds is zero there: a step costs one JVP on `share` of the batch.
    The network is told (s, s - r) (`denoisers.meanflow_times`).
    `power` p > 0 divides each example's mean squared error e by (e + c)^p, held fixed: the paper's adaptive weight
    (c = `MEANFLOW_C`), so that p = 1 gives every example a loss near 1 whatever its scale. On images
    (784 numbers an example) e hardly depends on the draw of the noise, and the weight evens out the examples of
    different times and intervals; on 2-D points e is mostly the draw's own randomness, and weighting by it pulls
    the regression away from its mean. `TrainConfig.meanflow_power` picks p by the data.
    """
    ends = torch.sigmoid(LOGIT_MEAN + LOGIT_STD * draw[:, :2])
    jump = draw[:, 2] < share  # (B,) the examples with r < s
    s = torch.where(jump, ends.max(dim=1).values, ends[:, 0])
    r = torch.where(jump, ends.min(dim=1).values, ends[:, 0])
    x = _column(1 - s, x0) * x0 + _column(s, x0) * noise
    v = noise - x0
    pick = (lambda rows: None) if labels is None else (lambda rows: labels[rows])
    errors = []
    flow = ~jump
    if flow.any():
        errors.append((net(x[flow], meanflow_times(s[flow], r[flow]), pick(flow)) - v[flow]) ** 2)
    if jump.any():
        def u(x, r, s):
            return net(x, meanflow_times(s, r), pick(jump))

        with torch.autocast(x.device.type, enabled=False):  # forward-mode AD has no autocast: float32 throughout
            u_hat, target = meanflow_target(u, x[jump], r[jump], s[jump], v[jump])
        errors.append((u_hat - target) ** 2)
    if not power:
        return torch.cat([e.flatten() for e in errors]).mean()
    error = torch.cat([e.flatten(1).mean(1) for e in errors])  # (B,) one mean squared error an example
    return (error / (error.detach() + MEANFLOW_C) ** power).mean()


def meanflow_target(u, x, r, s, v):
    """(u(x, r, s), the MeanFlow target v - (s - r) du/ds held fixed): du/ds, the derivative of u along the path
    through x (which moves with velocity v while r stays put), is one Jacobian-vector product with tangent (v, 0, 1)."""
    u_hat, du_ds = torch.func.jvp(u, (x, r, s), (v, torch.zeros_like(r), torch.ones_like(s)))
    return u_hat, (v - _column(s - r, x) * du_ds).detach()


@dataclass(frozen=True)
class Objective:
    """One objective: see the module's tables."""

    name: str
    draw: Callable
    loss: Callable
    sampler: tuple[str, int]
    levels: Callable | None = None
    sigma_data: bool = False
    output: str | None = None  # what the network outputs (`denoisers.Denoiser`'s prediction); None: `prediction`
    model_fields: dict = field(default_factory=dict)  # network config fields it needs (see the module)

    @property
    def discrete(self) -> bool:
        """Whether the network knows only DDPM's discrete steps (its target: `prediction`, eps, x0 or v)."""
        return self.levels is None


def ot_pairing(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`noise` (B, ...) reordered to pair with `x0` (B, ...) at the least total squared distance: minibatch optimal
    transport (Tong et al. 2023, arXiv 2302.00482, their OT-CFM; Pooladian et al. 2023), the assignment problem solved
    exactly. Two lines of such a pairing that pass close at the same s move in nearly the same direction (chapter 8,
    section 6)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).double(), noise.flatten(1).double()) ** 2  # (B, B): ||x0_i - eps_j||^2
    _, columns = linear_sum_assignment(cost.cpu().numpy())  # x0_i goes with eps_columns[i]
    return noise[torch.as_tensor(columns, device=noise.device)]


def _step_draw(B: int, generator, config, step: int) -> torch.Tensor:
    return torch.randint(0, config.T, (B,), generator=generator)


def _normal_draw(B: int, generator, config, step: int) -> torch.Tensor:
    return torch.randn(B, generator=generator)


def _grid_draw(B: int, generator, config, step: int) -> torch.Tensor:
    """(B, 2): each example's n in 1..N beside the grid's N at this step."""
    N = ct_grid(step, config.steps, config.ct_grid)
    return torch.stack([torch.randint(1, N + 1, (B,), generator=generator).float(), torch.full((B,), float(N))], 1)


def _interval_draw(B: int, generator, config, step: int) -> torch.Tensor:
    return torch.cat([torch.randn(B, 2, generator=generator), torch.rand(B, 1, generator=generator)], dim=1)


OBJECTIVES = {
    "ddpm": Objective("ddpm", _step_draw, sampler=("ddim", 50),
                      loss=lambda net, x0, t, noise, labels, config, schedule: diffusion_loss(
                          net, x0, t, noise, schedule, config.prediction, labels, loss_weight=config.loss_weight)),
    "edm": Objective("edm", _normal_draw, sampler=("heun", 18), levels=karras_levels, sigma_data=True, output="edm",
                     loss=lambda net, x0, z, noise, labels, config, schedule: edm_loss(
                         net, x0, z, noise, labels, config.sigma_data)),
    "flow": Objective("flow", _normal_draw, sampler=("heun", 18), levels=flow_levels, output="flow",
                      loss=lambda net, x0, z, noise, labels, config, schedule: flow_loss(net, x0, z, noise, labels)),
    "flow-ot": Objective("flow-ot", _normal_draw, sampler=("heun", 18), levels=flow_levels, output="flow",
                         loss=lambda net, x0, z, noise, labels, config, schedule: flow_loss(
                             net, x0, z, ot_pairing(x0, noise), labels)),
    "ct": Objective("ct", _grid_draw, sampler=("consistency", 1), levels=flow_levels, output="flow",
                    loss=lambda net, x0, draw, noise, labels, config, schedule: consistency_training_loss(
                        net, x0, draw[:, 0], noise, labels, grid=draw[:, 1])),
    "meanflow": Objective("meanflow", _interval_draw, sampler=("meanflow", 1), levels=flow_levels, output="flow",
                          model_fields={"interval": True},
                          loss=lambda net, x0, draw, noise, labels, config, schedule: meanflow_loss(
                              net, x0, draw, noise, labels, config.meanflow_power, config.meanflow_share)),
}
DEFAULT_SAMPLER = {name: objective.sampler for name, objective in OBJECTIVES.items()}


def objective_of(info) -> Objective:
    """The objective a checkpoint's network was trained with (`info`: its info dict or `checkpoint.ModelInfo`; DDPM's
    for checkpoints written before there were others)."""
    from .checkpoint import stored_objective

    name = stored_objective(info)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def is_flow(info: dict) -> bool:
    """Whether a checkpoint's network outputs a velocity on the straight path (flow matching, or distilled from it)."""
    return objective_of(info).levels is flow_levels


def check_flow(info: dict, what: str) -> None:
    """Refuse a network that was not trained on the straight (flow) path, for what needs one."""
    if not is_flow(info):
        raise ValueError(f"{what} solves a flow model's ODE; this model is {objective_of(info).name!r}")
