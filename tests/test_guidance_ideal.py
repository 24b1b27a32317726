"""Classifier-free guidance at its two anchor points, and the exact denoiser of a finite data set."""

import math

import pytest
import torch

from diffusion_lib import (UNet, UNetConfig, as_eps_model, ddim_step, ddim_timesteps, gaussian_x0, guided_eps_fn,
                           ideal_eps_fn, ideal_x0, make_schedule, q_sample, sample_loop)


@pytest.fixture(scope="module")
def conditional_unet():
    torch.manual_seed(0)
    return UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_classes=10)).eval()


def test_guidance_zero_is_unconditional_and_one_is_conditional(conditional_unet):
    s = make_schedule("linear", 1000)
    model = as_eps_model(conditional_unet, s)
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([3, 300, 600, 999]), torch.tensor([0, 3, 7, 9])
    null = torch.full_like(labels, 10)
    with torch.no_grad():
        eps_cond, eps_uncond = model(x, t, labels), model(x, t, null)
        assert not torch.allclose(eps_cond, eps_uncond)  # the label matters, so the checks below can fail
        assert torch.allclose(guided_eps_fn(model, labels, 0.0, 10)(x, t), eps_uncond, atol=1e-5)
        assert torch.allclose(guided_eps_fn(model, labels, 1.0, 10)(x, t), eps_cond, atol=1e-5)
        guided = guided_eps_fn(model, labels, 3.0, 10)(x, t)
        assert torch.allclose(guided, eps_uncond + 3.0 * (eps_cond - eps_uncond), atol=1e-5)
    with pytest.raises(ValueError, match="guidance scale w must be >= 0"):
        guided_eps_fn(model, labels, -1.0, 10)


def test_ideal_denoiser_is_the_posterior_average():
    s = make_schedule("linear", 1000)
    data = torch.randn(5, 3, dtype=torch.float64)
    xt, t = torch.randn(4, 3, dtype=torch.float64), torch.tensor([10, 200, 500, 999])
    ab = s.alpha_bars[t][:, None, None]
    log_lik = -((xt[:, None, :] - ab.sqrt() * data[None]) ** 2).sum(-1) / (2 * (1 - ab[:, :, 0]))  # (B, N)
    expected = torch.softmax(log_lik, dim=1) @ data
    assert torch.allclose(ideal_x0(xt, t, data, s), expected)


def test_ideal_denoiser_memorises_at_low_noise_and_averages_at_high_noise():
    s = make_schedule("linear", 1000)
    data = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    t_low = torch.full((8,), 5)
    xt = q_sample(data, t_low, s)
    assert torch.allclose(ideal_x0(xt, t_low, data, s), data, atol=1e-6)  # snaps back to its own image
    t_high = torch.full((8,), 999)
    assert torch.allclose(ideal_x0(torch.randn_like(data), t_high, data, s), data.mean(0).expand_as(data), atol=0.05)
    samples = sample_loop(ideal_eps_fn(data, s), (16, 1, 4, 4), s, "ddim", 50, x_T=torch.randn(16, 1, 4, 4, dtype=torch.float64))
    distance_to_nearest = torch.cdist(samples.flatten(1), data.flatten(1)).min(1).values
    assert distance_to_nearest.max() < 1e-3  # every sample is a training image


def test_gaussian_posterior_mean_matches_the_finite_formula_for_many_points():
    """A stratified sample of N(mu, var) makes the finite-set denoiser the Gaussian one, tightly enough to see one step.

    T = 10, so neighbouring steps differ a lot in alpha-bar: the Gaussian formula read one step off misses by far more
    than the tolerance.
    """
    s = make_schedule("linear", 10)
    mu, var = torch.tensor([1.0], dtype=torch.float64), 0.5
    quantiles = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000
    data = mu + var**0.5 * torch.distributions.Normal(0.0, 1.0).icdf(quantiles)[:, None]  # error O(1/N), not O(1/sqrt N)
    xt = torch.tensor([[0.2], [1.5], [-1.0], [0.7]], dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])  # later steps of this short chain are nearly pure noise
    exact = gaussian_x0(xt, t, mu, var, s)
    assert torch.allclose(ideal_x0(xt, t, data, s), exact, atol=2e-3)
    assert (gaussian_x0(xt, t + 1, mu, var, s) - exact).abs().min() > 1e-2  # one step off would fail the check


def test_ideal_sampler_reaches_every_training_image_equally_often():
    """The exact denoiser's samples must be the uniform mixture of the data: each point about n / N times.

    Snapping to *some* training image happens whatever the path (the low-noise steps always snap); a wrong
    direction term in DDIM changes which one, and the counts show it (checked below on a deliberately broken step).
    """
    s = make_schedule("cosine", 1000)
    data = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    n = 1600
    x_T = torch.randn(n, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps_fn = ideal_eps_fn(data, s)
    samples = sample_loop(eps_fn, x_T.shape, s, "ddim", 50, x_T=x_T)
    x, pairs = x_T, list(zip(ddim_timesteps(1000, 50), ddim_timesteps(1000, 50)[1:] + [-1]))
    for t_int, t_prev in pairs:  # the same steps with the direction term's coefficient 10% short
        t = torch.full((n,), t_int)
        eps = eps_fn(x, t)
        _, x0_hat = ddim_step(eps, x, t, torch.full((n,), t_prev), s)
        ab_prev = s.alpha_bars[t_prev].item() if t_prev >= 0 else 1.0
        x = math.sqrt(ab_prev) * x0_hat + 0.9 * math.sqrt(1 - ab_prev) * eps
    counts = {}
    for name, result in (("ddim", samples), ("wrong direction", x)):
        nearest = torch.cdist(result.flatten(1), data.flatten(1)).min(1)
        counts[name] = torch.bincount(nearest.indices, minlength=8)
    assert torch.cdist(samples.flatten(1), data.flatten(1)).min(1).values.max() < 1e-3  # every sample is a training image
    # binomial(1600, 1/8): mean 200, sd 13; 4 sd either way
    assert counts["ddim"].min() > 148 and counts["ddim"].max() < 252, counts
    assert counts["wrong direction"].min() <= 148 or counts["wrong direction"].max() >= 252, counts


def test_ideal_denoiser_rejects_mismatched_shapes():
    s = make_schedule("linear", 10)
    with pytest.raises(ValueError, match="data points have shape"):
        ideal_x0(torch.randn(2, 3), torch.tensor([1, 2]), torch.randn(5, 4), s)


def test_generate_checks_labels_and_unconditional_use():
    from diffusion_lib import generate

    cond = UNet(UNetConfig(base_channels=8, groups=4, channel_mults=(1, 2), attention_levels=(1,), num_classes=10))
    uncond = UNet(UNetConfig(base_channels=8, groups=4, channel_mults=(1, 2), attention_levels=(1,)))
    info = {"schedule": "linear", "T": 10, "prediction": "eps", "data": "mnist"}
    images, labels = generate(cond, info, 3, "ddim", 2, labels=torch.tensor([1, 2, 3]), guidance=2.0)
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        generate(cond, info, 3, "ddim", 2, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="this model is unconditional"):
        generate(uncond, info, 3, "ddim", 2, guidance=3.0)


def _flow_unet(seed: int, **config):
    torch.manual_seed(seed)
    return UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,), **config)).eval()


def test_autoguidance_is_the_guidance_rule_on_the_raw_outputs():
    from diffusion_lib.guidance import AutoGuided

    model, weak = _flow_unet(0), _flow_unet(1)
    calls = []
    weak.register_forward_hook(lambda *args: calls.append(1))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 500.0, 990.0])
    with torch.no_grad():
        out, out_weak = model(x, t), weak(x, t)
        assert not torch.allclose(out, out_weak)  # two different networks, so the checks below can fail
        calls.clear()
        assert torch.equal(AutoGuided(model, weak, 1.0)(x, t), out) and not calls  # w = 1: the model alone, one call
        assert torch.allclose(AutoGuided(model, weak, 0.0)(x, t), out_weak, atol=1e-6)
        assert torch.allclose(AutoGuided(model, weak, 2.5)(x, t), out_weak + 2.5 * (out - out_weak), atol=1e-5)
    with pytest.raises(ValueError, match="w must be >= 0"):
        AutoGuided(model, weak, -1.0)
    with pytest.raises(ValueError, match="num_classes"):
        AutoGuided(model, _flow_unet(2, num_classes=10), 2.0)


def test_autoguided_sampling_with_an_identical_weak_model_changes_nothing_and_checks_checkpoints():
    import copy

    from diffusion_lib import TrainConfig, autoguided, generate

    info = TrainConfig(data="mnist", steps=1).info()  # the default recipe: flow matching
    model = _flow_unet(0)
    alone, _ = generate(model, info, 4, "heun", 3, seed=1)
    twin = autoguided(model, info, copy.deepcopy(model), info, 3.0)  # model - weak = 0 at every step
    assert torch.allclose(generate(twin, info, 4, "heun", 3, seed=1)[0], alone, atol=1e-5)
    other = autoguided(model, info, _flow_unet(1), info, 3.0)
    assert not torch.allclose(generate(other, info, 4, "heun", 3, seed=1)[0], alone, atol=1e-3)
    ddpm_info = TrainConfig(data="mnist", steps=1, objective="ddpm").info()
    with pytest.raises(ValueError, match="objective is 'ddpm'"):
        autoguided(model, info, _flow_unet(1), ddpm_info, 2.0)
