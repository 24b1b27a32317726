"""DDPM, DDIM and DPM-Solver++ against each other and against exact denoisers, where the answer is known."""

import math

import pytest
import torch

from conftest import gaussian_tolerance
from diffusion_lib import (ddim_invert, ddim_step, ddim_timesteps, ddpm_step, dpm_solver_step, gaussian_eps_fn,
                           ideal_eps_fn, make_schedule, sample_loop, slerp)
from diffusion_lib.samplers import dpm_solver_timesteps


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_with_eta_one_on_every_step_is_the_ddpm_step(name):
    s = make_schedule(name, 1000)
    t = torch.tensor([0, 1, 2, 250, 500, 998, 999])
    xt, eps, noise = (torch.randn(len(t), 1, 6, 6, dtype=torch.float64) for _ in range(3))
    for clip in (False, True):
        ddpm, ddpm_x0 = ddpm_step(eps, xt, t, s, noise=noise, clip_x0=clip)
        ddim, ddim_x0 = ddim_step(eps, xt, t, t - 1, s, eta=1.0, noise=noise, clip_x0=clip)
        assert torch.allclose(ddpm, ddim, atol=1e-10) and torch.allclose(ddpm_x0, ddim_x0)


def test_ddpm_step_is_algorithm_2():
    """x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - ab_t) eps) + sigma_t z, sigma_t^2 = beta-tilde_t."""
    s = make_schedule("linear", 1000)
    t = torch.tensor([1, 10, 500, 999])
    xt, eps, z = (torch.randn(4, 2, dtype=torch.float64) for _ in range(3))
    alpha, beta, ab = (v[t][:, None] for v in (s.alphas, s.betas, s.alpha_bars))
    expected = (xt - beta / (1 - ab).sqrt() * eps) / alpha.sqrt() + s.posterior_variance[t][:, None].sqrt() * z
    assert torch.allclose(ddpm_step(eps, xt, t, s, noise=z)[0], expected)


def test_ddim_with_eta_zero_recovers_a_one_point_data_set():
    s, point = make_schedule("linear", 1000), torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    for steps in (1, 10, 50):
        x = sample_loop(ideal_eps_fn(point, s), (5, 3), s, "ddim", steps, eta=0.0,
                        generator=torch.Generator().manual_seed(1), x_T=torch.randn(5, 3, dtype=torch.float64))
        assert torch.allclose(x, point.expand(5, 3), atol=1e-6), steps


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 1000, 0.0), ("ddim", 100, 0.0), ("ddim", 1000, 1.0), ("ddpm", 500, 0.0)])
def test_samplers_reproduce_a_gaussian_data_set(sampler, steps, eta):
    """Driven by the exact denoiser of N(mu, s^2 I), samples must have mean mu and variance s^2."""
    s, n = make_schedule("linear", 1000), 20000
    mu, var = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.25
    x_T = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = sample_loop(gaussian_eps_fn(mu, var, s), (n, 2), s, sampler, steps, eta,
                    generator=torch.Generator().manual_seed(4), x_T=x_T)
    std = math.sqrt(var)
    assert torch.allclose(x.mean(0), mu, atol=gaussian_tolerance(std, n))
    # Coarse steps bias the variance (stochastic samplers use only E[x0 | xt], so few big steps
    # lose spread: about -12% at 100 steps, -3% at 500); 10% is far below a broken sampler's error.
    assert torch.allclose(x.var(0), torch.full((2,), var, dtype=torch.float64), rtol=0.1)


def test_a_broken_sampler_would_fail_the_gaussian_check():
    """The check above has teeth: dropping DDIM's direction term changes the variance badly."""
    s, n = make_schedule("linear", 1000), 4000
    mu, var = torch.zeros(2, dtype=torch.float64), 0.25
    eps_fn = gaussian_eps_fn(mu, var, s)
    x = torch.randn(n, 2, dtype=torch.float64)
    for t_int, t_prev in zip(ddim_timesteps(1000, 50), ddim_timesteps(1000, 50)[1:] + [-1]):
        t = torch.full((n,), t_int)
        _, x0_hat = ddim_step(eps_fn(x, t), x, t, torch.full((n,), t_prev), s)
        ab_prev = s.alpha_bars[t_prev].item() if t_prev >= 0 else 1.0
        x = math.sqrt(ab_prev) * x0_hat  # no direction term: collapses onto the mean
    assert not torch.allclose(x.var(0), torch.full((2,), var, dtype=torch.float64), rtol=0.1)


def test_ddim_inversion_round_trip_improves_with_steps():
    s = make_schedule("linear", 1000)
    mu, var = torch.tensor([0.5, -0.5], dtype=torch.float64), 0.3
    eps_fn = gaussian_eps_fn(mu, var, s)
    x0 = mu + math.sqrt(var) * torch.randn(64, 2, dtype=torch.float64)
    errors = []
    for steps in (10, 100, 500):
        noise = ddim_invert(eps_fn, x0, s, steps)
        back = sample_loop(eps_fn, x0.shape, s, "ddim", steps, x_T=noise)
        errors.append((back - x0).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors
    assert abs(noise.std().item() - 1.0) < 0.25  # the inverted latents look like N(0, I)


def test_timestep_subsequences():
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    for steps in (1, 2, 7, 50, 999):
        ts = ddim_timesteps(1000, steps)
        assert len(ts) == steps and ts == sorted(ts, reverse=True) and ts[0] == 999
        assert steps == 1 or ts[-1] == 0
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer between 1 and T=1000"):
            ddim_timesteps(1000, bad)


def test_trajectory_and_bad_arguments():
    s = make_schedule("linear", 100)
    eps_fn = lambda x, t: torch.zeros_like(x)
    x, traj = sample_loop(eps_fn, (2, 1, 4, 4), s, "ddim", 10, return_trajectory=True)
    assert x.shape == (2, 1, 4, 4) and len(traj.xs) == len(traj.x0_hats) == len(traj.timesteps) == 10
    assert traj.timesteps == ddim_timesteps(100, 10)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample_loop(eps_fn, (2, 2), s, "euler")
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        sample_loop(eps_fn, (2, 2), s, "ddim", 10, eta=-0.5)
    with pytest.raises(ValueError, match="eta applies to the ddim sampler only"):
        sample_loop(eps_fn, (2, 2), s, "ddpm", eta=0.5)
    with pytest.raises(ValueError, match="between 1 and T=100"):
        sample_loop(eps_fn, (2, 2), s, "ddim", 101)
    with pytest.raises(ValueError, match="t_prev must be smaller than t"):
        ddim_step(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([5]), torch.tensor([5]), s)


def test_slerp_ends_and_norm():
    z0, z1 = torch.randn(1, 1, 28, 28), torch.randn(1, 1, 28, 28)
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-5) and torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-5)
    middle = slerp(z0, z1, 0.5)
    linear = 0.5 * (z0 + z1)
    assert abs(middle.norm() - (z0.norm() + z1.norm()) / 2) < 0.05 * z0.norm()  # keeps the norm ...
    assert linear.norm() < 0.8 * middle.norm()  # ... where the straight line loses about 30% of it


def test_dpm_solver_first_order_step_is_the_ddim_step():
    s = make_schedule("cosine", 1000)
    t, t_prev = torch.tensor([999, 600, 300, 5]), torch.tensor([700, 400, 100, -1])
    xt, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    ddim, x0_hat = ddim_step(eps, xt, t, t_prev, s)
    dpm, (kept, h) = dpm_solver_step(x0_hat, xt, t, t_prev, s)
    assert torch.allclose(dpm, ddim, atol=1e-10) and kept is x0_hat
    assert bool((h > 0).all()) and torch.isinf(h[-1]).all()  # the last step reaches the clean data


def test_dpm_solver_follows_the_exact_ode_better_than_ddim_and_converges_faster():
    """On N(mu, s^2 I) with its exact denoiser, both solve the same ODE; the second-order solver is closer.

    The reference is DDIM with all 1000 steps from the same noise. A first-order method's error
    falls about in proportion to the step count (2.5x from 20 to 50 steps), a second-order one's faster.
    """
    s, n = make_schedule("linear", 1000), 4000
    mu, var = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.25
    eps_fn = gaussian_eps_fn(mu, var, s)
    x_T = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    exact = sample_loop(eps_fn, (n, 2), s, "ddim", 1000, x_T=x_T)
    error = {(sampler, steps): (sample_loop(eps_fn, (n, 2), s, sampler, steps, x_T=x_T) - exact).abs().mean().item()
             for sampler in ("ddim", "dpm-solver++") for steps in (20, 50)}
    assert error["dpm-solver++", 20] < error["ddim", 20] / 2, error
    assert error["dpm-solver++", 50] < error["ddim", 50] / 5, error
    assert error["dpm-solver++", 20] / error["dpm-solver++", 50] > 2 * error["ddim", 20] / error["ddim", 50], error
    dpm = sample_loop(eps_fn, (n, 2), s, "dpm-solver++", 50, x_T=x_T)
    assert torch.allclose(dpm.mean(0), mu, atol=gaussian_tolerance(math.sqrt(var), n))
    assert torch.allclose(dpm.var(0), torch.full((2,), var, dtype=torch.float64), rtol=0.05)


def test_dpm_solver_timesteps_leave_out_the_clean_end():
    assert dpm_solver_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert dpm_solver_timesteps(1000, 1) == [999]
    for T, steps in ((1000, 1000), (1000, 999), (1000, 7), (10, 3)):  # exactly `steps` distinct, decreasing steps
        timesteps = dpm_solver_timesteps(T, steps)
        assert len(timesteps) == steps and all(a > b for a, b in zip(timesteps, timesteps[1:])), (T, steps)
    assert dpm_solver_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="between 1 and T"):
        dpm_solver_timesteps(1000, 0)


def test_dpm_solver_refuses_eta():
    s = make_schedule("linear", 100)
    with pytest.raises(ValueError, match="eta applies to the ddim sampler only"):
        sample_loop(lambda x, t: torch.zeros_like(x), (2, 2), s, "dpm-solver++", 10, eta=0.5)
