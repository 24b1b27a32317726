"""One denoiser interface and one sampler family: each checked against the papers' forms the chapters teach.

The family (`samplers.sample_*`) works on levels x = alpha x_0 + sigma eps; the papers' steps (`ddim_step`,
`dpm_solver_step`, `ode_sample`, `distill.consistency_sample`) on DDPM's integer steps or a path's own time.
Each test runs both on the same inputs in float64 and asks for agreement to round-off, so an off-by-one
level, a missing factor or a step to the wrong time fails it.
"""

import math

import pytest
import torch

import diffusion_lib as dl
from diffusion_lib import samplers
from diffusion_lib.continuous import as_eps_model, edm_denoise, edm_derivative, flow_derivative, flow_velocity, ode_sample
from diffusion_lib.denoisers import Denoiser, EpsFnDenoiser, Level, bound, clipped, flow_estimates
from diffusion_lib.distill import consistency_sample
from diffusion_lib.forward import to_eps_x0
from diffusion_lib.objectives import OBJECTIVES
from diffusion_lib.samplers import (ddim_step, ddim_timesteps, ddpm_levels, dpm_solver_step, dpm_solver_timesteps,
                                    flow_levels, karras_levels, posterior_std, sample_consistency, sample_ddim,
                                    sample_dpm_solver, sample_euler, sample_heun)

SCHEDULE = dl.make_schedule("cosine", 1000)


class Net(torch.nn.Module):
    """A small smooth network of (x, noise label): every conversion and step is exercised on a non-trivial output."""

    def forward(self, x, t, labels=None):
        return torch.tanh(0.7 * x + 0.001 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))) - 0.2


NET = Net()


def x64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------ the denoisers


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_a_ddpm_network_answers_as_forward_converts_it(prediction):
    x, t = x64(3, 1, 4, 4), 437
    x0_hat, eps_hat = Denoiser(NET, prediction, SCHEDULE)(x, ddpm_levels(SCHEDULE, [t])[0])
    steps = torch.full((3,), t)
    want_eps, want_x0 = to_eps_x0(prediction, NET(x, steps), x, steps, SCHEDULE)
    assert torch.equal(x0_hat, want_x0) and torch.equal(eps_hat, want_eps)
    with pytest.raises(ValueError, match="discrete steps"):
        Denoiser(NET, prediction, SCHEDULE)(x, Level(0.5, 0.5))


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_edm_and_flow_networks_answer_at_ddpm_levels_as_the_change_of_variables_says(objective):
    x, t = x64(3, 1, 4, 4), 611
    x0_hat, eps_hat = Denoiser(NET, objective)(x, ddpm_levels(SCHEDULE, [t])[0])
    want_eps, want_x0 = as_eps_model(NET, SCHEDULE, objective, with_x0=True)(x, torch.full((3,), t))
    assert torch.allclose(x0_hat, want_x0, atol=1e-12) and torch.allclose(eps_hat, want_eps, atol=1e-12)


def test_estimates_reproduce_x_and_hold_on_every_scaling_of_the_path():
    """x = alpha x0_hat + sigma eps_hat at any level; and a level scaled by c answers the same (x scaled too)."""
    x = x64(2, 3)
    for objective in ("edm", "flow"):
        denoiser = Denoiser(NET, objective)
        for alpha, sigma in ((0.9, 0.3), (0.2, 1.7), (1.0, 40.0)):
            x0_hat, eps_hat = denoiser(x, Level(alpha, sigma))
            assert torch.allclose(alpha * x0_hat + sigma * eps_hat, x, atol=1e-10), (objective, alpha, sigma)
            scaled = denoiser(2.5 * x, Level(2.5 * alpha, 2.5 * sigma))
            assert torch.allclose(scaled[0], x0_hat, atol=1e-10) and torch.allclose(scaled[1], eps_hat, atol=1e-10)


def test_clipping_keeps_x_consistent():
    x = 3 * x64(4, 2)
    level = ddpm_levels(SCHEDULE, [900])[0]
    x0_hat, eps_hat = clipped(bound(Denoiser(NET, "x0", SCHEDULE)))(x, level)
    assert float(x0_hat.abs().max()) <= 1 and torch.allclose(level.alpha * x0_hat + level.sigma * eps_hat, x)


# ------------------------------------------------------------------------------- the family against the papers


def eps_fn(x, t):
    return NET(x, t)


@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0])
def test_the_family_ddim_is_the_papers_ddim_step_by_step(eta):
    timesteps = ddim_timesteps(1000, 7)
    levels, x = ddpm_levels(SCHEDULE, timesteps), x64(3, 2)
    got = sample_ddim(bound(EpsFnDenoiser(eps_fn, SCHEDULE)), x, levels, torch.Generator().manual_seed(5), eta=eta)
    generator, want = torch.Generator().manual_seed(5), x
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        t, t_prev = torch.full((3,), t), torch.full((3,), t_prev)
        want, _ = ddim_step(eps_fn(want, t), want, t, t_prev, SCHEDULE, eta, generator=generator)
    assert torch.allclose(got, want, atol=1e-9)


def test_posterior_std_is_ddim_eq_16_and_the_ddpm_variance():
    for t, t_prev in ((999, 666), (500, 499), (3, 0), (0, -1)):
        level, to = ddpm_levels(SCHEDULE, [t, t_prev])[:2] if t_prev >= 0 else ddpm_levels(SCHEDULE, [t])
        ab, ab_prev = float(SCHEDULE.alpha_bars[t]), 1.0 if t_prev < 0 else float(SCHEDULE.alpha_bars[t_prev])
        assert posterior_std(level, to) == pytest.approx(math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)),
                                                         rel=1e-12, abs=1e-15)
    level, to = ddpm_levels(SCHEDULE, [500, 499])[:2]
    assert posterior_std(level, to) ** 2 == pytest.approx(float(SCHEDULE.posterior_variance[500]), rel=1e-10)


def test_the_family_dpm_solver_is_the_papers_multistep_solver():
    timesteps = dpm_solver_timesteps(1000, 6)
    levels, x = ddpm_levels(SCHEDULE, timesteps), x64(3, 2)
    denoiser = EpsFnDenoiser(eps_fn, SCHEDULE)
    got = sample_dpm_solver(bound(denoiser), x, levels)
    want, previous = x, None
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        level = ddpm_levels(SCHEDULE, [t])[0]
        x0_hat, _ = denoiser(want, level)
        want, previous = dpm_solver_step(x0_hat, want, torch.full((3,), t), torch.full((3,), t_prev), SCHEDULE,
                                         previous)
    assert torch.allclose(got, want, atol=1e-9)


@pytest.mark.parametrize("heun", [False, True])
def test_the_family_ode_samplers_are_edm_algorithm_1_on_both_paths(heun):
    x = x64(3, 2)
    run = sample_heun if heun else sample_euler
    flow = run(bound(Denoiser(NET, "flow")), x, flow_levels(5))
    want = ode_sample(flow_derivative(lambda x, s: flow_velocity(NET, x, s)), x, dl.continuous.flow_times(5), heun)
    assert torch.allclose(flow, want, atol=1e-9)
    edm = run(bound(Denoiser(NET, "edm")), 80 * x, karras_levels(5))
    want = ode_sample(edm_derivative(lambda x, sigma: edm_denoise(NET, x, sigma)), 80 * x,
                      dl.continuous.karras_sigmas(5), heun)
    assert torch.allclose(edm, want, atol=1e-8)


def test_the_family_consistency_sampler_renoises_the_last_estimate():
    x, steps = x64(3, 2), 3
    got = sample_consistency(bound(Denoiser(NET, "flow")), x, flow_levels(steps), torch.Generator().manual_seed(2))
    generator, want = torch.Generator().manual_seed(2), x
    for i, s in enumerate([1.0, 2 / 3, 1 / 3]):
        if i:
            want = (1 - s) * want + s * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        want = want - s * flow_velocity(NET, want, torch.full((3,), s, dtype=x.dtype))
    assert torch.allclose(got, want, atol=1e-10)
    chapter_9 = consistency_sample(lambda x, s: flow_velocity(NET, x, s), x, steps, torch.Generator().manual_seed(2))
    assert torch.allclose(chapter_9, want, atol=1e-10)


def test_ddim_with_eta_zero_on_the_flow_path_is_euler():
    """Chapter 8's identity, now one line: DDIM's update on the straight path's levels is Euler's step in s."""
    x = x64(3, 2)
    ddim = sample_ddim(bound(Denoiser(NET, "flow")), x, flow_levels(6))
    euler = sample_euler(bound(Denoiser(NET, "flow")), x, flow_levels(6))
    assert torch.allclose(ddim, euler, atol=1e-10)


def test_levels_and_their_refusals():
    assert [level.t for level in samplers.sampler_levels("ddim", SCHEDULE, 4)] == [999, 666, 333, 0, -1]
    assert len(samplers.sampler_levels("ddpm", SCHEDULE)) == 1001
    flow = samplers.sampler_levels("euler", SCHEDULE, 4, OBJECTIVES["flow"].levels)
    assert [(level.alpha, level.sigma) for level in flow] == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25),
                                                              (1.0, 0.0)]
    assert samplers.sampler_levels("heun", SCHEDULE, None, OBJECTIVES["edm"].levels)[0].sigma == pytest.approx(80.0)
    with pytest.raises(ValueError, match="--objective edm or flow"):
        samplers.sampler_levels("heun", SCHEDULE, 4, OBJECTIVES["ddpm"].levels)
    with pytest.raises(ValueError, match="needs a flow model"):
        samplers.sampler_levels("consistency", SCHEDULE, 1, OBJECTIVES["edm"].levels)
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.sampler_levels("lms", SCHEDULE, 4)


def test_an_ode_trajectory_records_each_step_start_and_its_estimate():
    """Euler and Heun record, for every step, the level's tau, the x it starts from and the denoiser's x0_hat there
    (Heun's correction, made at the next level, is not a step start)."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, dtype=torch.float64)
    denoiser = bound(Denoiser(NET, "flow"))
    for fn in (sample_euler, sample_heun):
        trajectory = samplers.Trajectory()
        levels = flow_levels(4)
        fn(denoiser, x, levels, trajectory=trajectory)
        assert trajectory.timesteps == [level.tau for level in levels[:-1]]
        assert len(trajectory.xs) == len(trajectory.x0_hats) == 4
        for level, xs, x0_hat in zip(levels, trajectory.xs, trajectory.x0_hats):
            assert torch.equal(x0_hat, denoiser(xs, level)[0])
