"""The schedules and the forward process against their defining equations."""

import dataclasses
import math

import pytest
import torch

from conftest import gaussian_tolerance
from diffusion_lib import (eps_from_v, eps_from_x0, make_schedule, q_posterior, q_sample, q_step, to_eps,
                           training_target, v_from_eps_x0, x0_from_eps, x0_from_v)
from diffusion_lib.schedules import Schedule


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_schedule_constants_are_consistent(name, T):
    s = make_schedule(name, T)
    assert s.T == T and s.betas.dtype == torch.float64
    assert torch.allclose(s.alphas, 1 - s.betas)
    assert torch.allclose(s.alpha_bars, torch.cumprod(1 - s.betas, 0))
    assert s.alpha_bars_prev[0] == 1 and torch.allclose(s.alpha_bars_prev[1:], s.alpha_bars[:-1])
    assert torch.allclose(s.snr, s.alpha_bars / (1 - s.alpha_bars))
    assert bool((s.betas > 0).all() and (s.betas <= 0.999).all())
    assert bool((s.alpha_bars[1:] < s.alpha_bars[:-1]).all()), "alpha-bar must decrease"


def test_linear_schedule_matches_ddpm_end_points():
    s = make_schedule("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)


def test_cosine_schedule_matches_its_closed_form():
    T, offset = 1000, 0.008
    s = make_schedule("cosine", T)
    f = lambda t: math.cos((t / T + offset) / (1 + offset) * math.pi / 2) ** 2
    for t in [0, 10, 500, 900]:  # before the 0.999 clip bites
        assert s.alpha_bars[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max().item() == pytest.approx(0.999)


def test_schedule_is_immutable_and_validated():
    s = make_schedule("linear", 50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = torch.zeros(3)
    s.alpha_bars[0] = 5.0  # a derived tensor is a fresh copy: changing it changes nothing
    assert s.alpha_bars[0] < 1
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        make_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="positive integer"):
        make_schedule("linear", 0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        Schedule("custom", torch.tensor([0.1, 1.0]))


def test_posterior_variance_is_bayes_rule():
    """beta-tilde_t and the posterior mean from the product of two Gaussians (DDPM Eqs. 6-7)."""
    s = make_schedule("linear", 1000)
    t = torch.arange(1, 1000)
    ab_prev, alpha, beta = s.alpha_bars_prev[t], s.alphas[t], s.betas[t]
    # prior x_{t-1} | x0 ~ N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood x_t | x_{t-1} ~ N(sqrt(alpha) x_{t-1}, beta)
    precision = 1 / (1 - ab_prev) + alpha / beta
    assert torch.allclose(s.posterior_variance[t], 1 / precision, rtol=1e-10)
    x0, xt = torch.randn(999, dtype=torch.float64), torch.randn(999, dtype=torch.float64)
    bayes_mean = (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * xt / beta) / precision
    mean, var = q_posterior(x0, xt, t, s)
    assert torch.allclose(mean, bayes_mean, rtol=1e-8) and torch.allclose(var.squeeze(), 1 / precision)
    mean0, var0 = q_posterior(x0[:1], xt[:1], torch.tensor([0]), s)  # the last step lands on x0 exactly
    assert var0.item() == 0 and torch.allclose(mean0, x0[:1])


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_chained_steps_equal_closed_form_moments_exactly(name):
    """Chaining q(x_t | x_{t-1}) multiplies the mean by sqrt(alpha) and maps v -> alpha v + beta."""
    s = make_schedule(name, 1000)
    mean_coef, var = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for t in range(s.T):
        mean_coef, var = mean_coef * s.alphas[t].sqrt(), s.alphas[t] * var + s.betas[t]
        if t in (0, 99, 499, 999):
            assert mean_coef.item() == pytest.approx(s.alpha_bars[t].sqrt().item(), rel=1e-9)
            assert var.item() == pytest.approx(1 - s.alpha_bars[t].item(), rel=1e-9)


def test_chained_steps_equal_closed_form_in_distribution():
    s, n = make_schedule("linear", 1000), 20000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(s.T):
        x = q_step(x, torch.full((n,), t), s)
    jump = q_sample(x0, torch.full((n,), s.T - 1), s)
    mean, std = s.alpha_bars[-1].sqrt().item() * 0.7, (1 - s.alpha_bars[-1]).sqrt().item()
    for samples in (x, jump):
        assert abs(samples.mean().item() - mean) < gaussian_tolerance(std, n)
        assert abs(samples.var().item() - std**2) < gaussian_tolerance(std**2 * math.sqrt(2), n)


def test_q_sample_uses_the_given_noise():
    s = make_schedule("linear", 100)
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 50, 99])
    ab = s.alpha_bars[t].float().reshape(-1, 1, 1, 1)
    assert torch.allclose(q_sample(x0, t, s, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


def test_parametrisations_convert_both_ways():
    s = make_schedule("cosine", 1000)
    x0, eps, t = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 10, 500, 900, 999])
    xt = q_sample(x0, t, s, eps)
    v = v_from_eps_x0(eps, x0, t, s)
    assert torch.allclose(x0_from_eps(xt, t, eps, s), x0)
    assert torch.allclose(eps_from_x0(xt, t, x0, s), eps)
    assert torch.allclose(eps_from_v(xt, t, v, s), eps) and torch.allclose(x0_from_v(xt, t, v, s), x0)
    for prediction in ("eps", "x0", "v"):
        target = training_target(prediction, x0, eps, t, s)
        assert torch.allclose(to_eps(prediction, target, xt, t, s), eps)
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        to_eps("score", eps, xt, t, s)


def test_bad_timesteps_and_shapes_are_named():
    s = make_schedule("linear", 100)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"timestep out of range.*T=100.*\[0, 99\]"):
        q_sample(x, torch.tensor([0, 100]), s)
    with pytest.raises(ValueError, match="out of range"):
        q_sample(x, torch.tensor([-1, 3]), s)
    with pytest.raises(TypeError, match="integers"):
        q_sample(x, torch.tensor([0.5, 3.0]), s)
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        q_sample(x, torch.tensor([1, 2, 3]), s)
    with pytest.raises(ValueError, match="noise shape"):
        q_sample(x, torch.tensor([1, 2]), s, torch.randn(2, 1, 5, 5))
