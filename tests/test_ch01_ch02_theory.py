"""The theory helpers of chapters 1 and 2: image spectra, drowning timesteps, the exact reverse step."""

import math

import numpy as np
import pytest
import torch

import diffusion_lib as dl
from diffusion_lib.course import ch01, ch02


def test_spectrum_of_a_cosine_sits_in_its_ring():
    side, cycles = 28, 3
    x = torch.arange(side, dtype=torch.float64)
    image = torch.cos(2 * math.pi * cycles * x / side).expand(side, side)[None, None]  # varies along the width
    frequencies, power = ch01.radial_power_spectrum(image)
    assert frequencies.tolist() == list(range(side // 2 + 1))
    assert int(power.argmax()) == cycles
    others = torch.cat([power[:cycles], power[cycles + 1:]])
    assert others.abs().max() < 1e-10 * power[cycles]
    # the two DFT coefficients at (0, +-3) each have |X|^2 / (H W) = H W / 4; the ring averages them with its other members
    fy, fx = np.meshgrid(np.fft.fftfreq(side, 1 / side), np.fft.fftfreq(side, 1 / side), indexing="ij")
    ring_size = int((np.round(np.hypot(fy, fx)) == cycles).sum())
    assert power[cycles].item() == pytest.approx(2 * side * side / 4 / ring_size, rel=1e-9)


def test_spectrum_of_white_noise_is_flat_at_its_variance():
    noise = 0.5 * torch.randn(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    _, power = ch01.radial_power_spectrum(noise)
    assert torch.allclose(power, torch.full_like(power, 0.25), rtol=0.1), power


def test_spectrum_of_noised_digits_is_signal_plus_flat_noise():
    digits = dl.load_mnist(train=False)[0][:500]
    schedule = dl.make_schedule("linear", 1000)
    _, clean = ch01.radial_power_spectrum(digits)
    assert clean[1] > 20 * clean[-1]  # digits: far more power at low frequencies than at high
    t = 300
    noised = dl.q_sample(digits, torch.full((len(digits),), t), schedule,
                         torch.randn(digits.shape, generator=torch.Generator().manual_seed(1)))
    _, power = ch01.radial_power_spectrum(noised)
    ab = schedule.alpha_bars[t].item()
    assert torch.allclose(power, ab * clean + (1 - ab), rtol=0.05)


def test_spectrum_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="B, C, H, W"):
        ch01.radial_power_spectrum(torch.zeros(28, 28))


def test_drowning_timestep_at_unit_power_is_where_alpha_bar_halves():
    alpha_bars = dl.make_schedule("linear", 1000).alpha_bars
    half = int((alpha_bars < 0.5).nonzero()[0])
    drowned = ch01.drowning_timestep(torch.tensor([1.0, 0.1, 10.0, 1e12]), alpha_bars)
    assert drowned[0] == half
    assert drowned[1] < drowned[0] < drowned[2]  # weaker frequencies drown earlier
    assert drowned[3] == len(alpha_bars)  # never drowned within the chain


def test_two_point_reverse_density_is_the_mixture_of_library_posteriors():
    schedule = dl.make_schedule("linear", 1000)
    grid = np.linspace(-3, 3, 20001)
    for t, xt in ((20, 0.3), (300, 0.0), (800, -1.2)):
        ab_t, ab_prev = schedule.alpha_bars[t].item(), schedule.alpha_bars[t - 1].item()
        density = ch02.two_point_reverse_density(grid, xt, ab_prev, ab_t)
        assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-9)
        # q(x_{t-1} | x_t) = sum over x0 of q(x0 | x_t) q(x_{t-1} | x_t, x0), the posterior of DDPM Eq. 7
        weights = np.array([math.exp(-(xt - math.sqrt(ab_t) * x0) ** 2 / (2 * (1 - ab_t))) for x0 in (-1, 1)])
        weights /= weights.sum()
        variance = schedule.posterior_variance[t].item()
        mixture = sum(w * np.exp(-(grid - schedule.posterior_coef_x0[t].item() * x0
                                   - schedule.posterior_coef_xt[t].item() * xt) ** 2 / (2 * variance))
                      / math.sqrt(2 * math.pi * variance) for w, x0 in zip(weights, (-1, 1)))
        assert np.abs(density - mixture).max() < 1e-6 * mixture.max()


def test_distance_to_gaussian_is_zero_for_a_gaussian_and_large_for_two_far_peaks():
    grid = np.linspace(-5, 5, 20001)
    gaussian = np.exp(-((grid - 0.3) / 0.7) ** 2 / 2) / (0.7 * math.sqrt(2 * math.pi))
    assert ch02.distance_to_gaussian(grid, gaussian) < 1e-6
    far_apart = ch02.two_point_reverse_density(grid, 0.0, 0.9999, 0.5)  # a jump from nearly clean data: two spikes
    assert ch02.distance_to_gaussian(grid, far_apart) > 0.9
    one_step = ch02.two_point_reverse_density(grid, 0.0, 0.5, 0.499)
    assert ch02.distance_to_gaussian(grid, one_step) < 1e-3


def test_two_point_reverse_density_rejects_steps_in_the_wrong_order():
    with pytest.raises(ValueError, match="alpha_bar_t < alpha_bar_s"):
        ch02.two_point_reverse_density(np.linspace(-1, 1, 11), 0.0, 0.4, 0.5)
