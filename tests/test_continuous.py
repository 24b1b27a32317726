"""EDM and rectified flow (`continuous`): preconditioning, losses, ODE solvers, and the change of variables to DDPM."""

import math

import pytest
import torch

import diffusion_lib as dl
from diffusion_lib.continuous import (SIGMA_DATA, as_eps_model, edm_denoise, edm_derivative, edm_loss,
                                      edm_preconditioning, flow_derivative, flow_loss, flow_times, karras_sigmas,
                                      ode_sample)
from diffusion_lib.ideal import gaussian_eps_fn
from diffusion_lib.training import min_snr_weight

MU, VAR = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.25


def test_sigma_data_is_the_measured_root_mean_square_of_mnist():
    images, _ = dl.load_mnist(train=True)
    assert abs(images.double().pow(2).mean().sqrt().item() - SIGMA_DATA) < 5e-4


def test_preconditioning_gives_unit_variance_input_and_target():
    """EDM App. B.6: Var(c_in x) = 1 and E[F_target^2] = 1 at every sigma, for data with E[x_0^2] = sigma_data^2."""
    g = torch.Generator().manual_seed(0)
    x0 = SIGMA_DATA * torch.randn(200_000, generator=g, dtype=torch.float64)
    for value in (0.01, 0.3, 1.0, 5.0, 80.0):
        sigma = torch.tensor([value], dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma)
        x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        assert (c_in * x).pow(2).mean().item() == pytest.approx(1, abs=0.02), value
        assert ((x0 - c_skip * x) / c_out).pow(2).mean().item() == pytest.approx(1, abs=0.02), value
        assert c_noise.item() == pytest.approx(math.log(value) / 4)


def exact_edm_net(mu, var, sigma_data=SIGMA_DATA):
    """F(c_in x; 1000 c_noise) whose D is the exact denoiser of Gaussian data N(mu, var I)."""

    def net(inp, label, labels=None):
        sigma = (label.double() * 4 / 1000).exp()  # label = 1000 ln(sigma) / 4
        c_skip, c_out, c_in, _ = edm_preconditioning(sigma, sigma_data)
        x = inp / c_in[:, None]
        denoised = mu + var / (var + sigma[:, None] ** 2) * (x - mu)
        return (denoised - c_skip[:, None] * x) / c_out[:, None]

    return net


def exact_flow_net(mu, var):
    """v(x_s, 1000 s) = E[eps - x_0 | x_s] for Gaussian data N(mu, var I)."""

    def net(x, label, labels=None):
        s = (label.double() / 1000)[:, None]
        spread = (1 - s) ** 2 * var + s**2  # Var(x_s)
        centred = x - (1 - s) * mu
        return s / spread * centred - (mu + (1 - s) * var / spread * centred)

    return net


def test_losses_vanish_at_the_exact_network_and_not_one_step_off():
    """One-point data (var 0): the exact network has zero loss; the same network told another noise level does not."""
    g = torch.Generator().manual_seed(1)
    x0 = MU.expand(512, 2).clone()
    z, noise = torch.randn(512, generator=g, dtype=torch.float64), torch.randn(512, 2, generator=g, dtype=torch.float64)
    edm_net, flow_net = exact_edm_net(MU, 0.0), exact_flow_net(MU, 0.0)
    assert edm_loss(edm_net, x0, z, noise).item() < 1e-12
    assert flow_loss(flow_net, x0, z, noise).item() < 1e-12
    assert edm_loss(lambda x, c, l=None: edm_net(x, c + 50), x0, z, noise).item() > 1e-3
    assert flow_loss(lambda x, c, l=None: flow_net(x, c * 0.99), x0, z, noise).item() > 1e-4


def test_heun_solves_the_edm_ode_to_second_order():
    """Gaussian data: the ODE maps x(sigma_max) to mu + s / sqrt(s^2 + sigma_max^2) (x - mu) exactly."""
    g = torch.Generator().manual_seed(2)
    x_T = 80.0 * torch.randn(1000, 2, generator=g, dtype=torch.float64)
    exact = MU + math.sqrt(VAR) / math.sqrt(VAR + 80.0**2) * (x_T - MU)
    net = exact_edm_net(MU, VAR)
    derivative = edm_derivative(lambda x, sigma: edm_denoise(net, x, sigma))
    error = {(heun, n): ((ode_sample(derivative, x_T, karras_sigmas(n), heun=heun) - exact) / (exact - MU)).abs().max().item()
             for heun in (True, False) for n in (10, 20, 40)}  # relative to the distance from the mean
    assert error[True, 40] < 0.01 and error[True, 40] < error[False, 40] / 5, error
    assert error[True, 10] / error[True, 20] > 3.5 and error[True, 20] / error[True, 40] > 3.5, error  # about 2^2
    assert 1.7 < error[False, 10] / error[False, 20] < 2.3 and 1.7 < error[False, 20] / error[False, 40] < 2.3, error


def test_flow_ode_is_solved_by_euler_and_heun():
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    exact = MU + math.sqrt(VAR) * x1  # the straight-line map x_s = (1 - s) mu + sqrt((1 - s)^2 var + s^2) x_1
    derivative = flow_derivative(lambda x, s: exact_flow_net(MU, VAR)(x, 1000 * s))
    error = {(heun, n): (ode_sample(derivative, x1, flow_times(n), heun=heun) - exact).abs().max().item()
             for heun in (True, False) for n in (25, 50)}
    assert error[False, 50] < 0.05 and error[True, 25] < error[False, 50] / 5, error  # Heun: fewer calls, less error
    assert 1.7 < error[False, 25] / error[False, 50] < 2.3 and error[True, 25] / error[True, 50] > 3.5, error


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_edm_and_flow_networks_are_ddpm_noise_predictors_after_a_change_of_variables(objective):
    """as_eps_model of the exact EDM / flow network equals DDPM's exact eps on every step of a cosine schedule."""
    schedule = dl.make_schedule("cosine", 1000)
    net = exact_edm_net(MU, VAR) if objective == "edm" else exact_flow_net(MU, VAR)
    t = torch.arange(0, 1000, 37)
    xt = torch.randn(len(t), 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = as_eps_model(net, schedule, objective)(xt, t)
    want = gaussian_eps_fn(MU, VAR, schedule)(xt, t)
    assert torch.allclose(got, want, atol=1e-8), (got - want).abs().max()
    eps, x0_hat = as_eps_model(net, schedule, objective, with_x0=True)(xt, t)
    assert torch.allclose(eps, want, atol=1e-8)
    assert torch.allclose(x0_hat, dl.gaussian_x0(xt, t, MU, VAR, schedule), atol=1e-8)


def test_min_snr_weights_are_one_x0_weight_in_three_units():
    snr = torch.logspace(-4, 4, 50, dtype=torch.float64)
    x0_weight = min_snr_weight(snr, "x0")
    assert torch.allclose(x0_weight, snr.clamp(max=5.0))
    assert torch.allclose(min_snr_weight(snr, "eps") * snr, x0_weight)  # ||eps error||^2 = SNR ||x0 error||^2
    assert torch.allclose(min_snr_weight(snr, "v") * (snr + 1), x0_weight)  # ||v error||^2 = (SNR + 1) ||x0 error||^2


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_a_continuous_model_trains_and_samples_with_every_sampler(objective):
    config = dl.TrainConfig(data="moons", steps=150, batch_size=128, lr=3e-3, objective=objective, schedule="cosine")
    result = dl.train(config, progress=False)
    assert result.losses[-1] < result.losses[0]
    for sampler in ("heun", "euler", "ddim", "dpm-solver++"):
        points, _ = dl.generate(result.ema_model, config.info(), 500, sampler, 10)
        assert points.shape == (500, 2) and points.isfinite().all()
        assert 0.5 < points.std().item() < 1.5, sampler  # the moons' spread, not noise at sigma_max
    default, _ = dl.generate(result.ema_model, config.info(), 50)  # no sampler named: Heun with 18 steps
    assert torch.equal(default, dl.generate(result.ema_model, config.info(), 50, "heun", 18)[0])


def test_ode_samplers_refuse_a_ddpm_model():
    config = dl.TrainConfig(data="moons", steps=1, objective="ddpm")
    model = dl.train(config, progress=False).ema_model
    with pytest.raises(ValueError, match="--objective edm or flow"):
        dl.generate(model, config.info(), 4, "heun", 5)


def test_loss_weight_is_for_ddpm_only():
    with pytest.raises(ValueError, match="for objective ddpm"):
        dl.TrainConfig(objective="flow", loss_weight="min-snr")


def test_a_conditional_flow_model_without_labels_is_its_null_class():
    """Float noise labels (1000 s) must not leak into the label embedding when no label is given."""
    torch.manual_seed(0)
    net = dl.UNet(dl.UNetConfig(base_channels=8, groups=4, num_classes=10)).eval()
    eps_fn = dl.as_eps_fn(net, dl.make_schedule("cosine", 1000), "flow")
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([10, 500, 990])
    null = dl.as_eps_fn(net, dl.make_schedule("cosine", 1000), "flow", labels=torch.full((3,), 10))
    assert torch.equal(eps_fn(x, t), null(x, t))


def test_sigma_data_is_measured_per_data_set_stored_and_used():
    """EDM's sigma_data is the training data's own sqrt(E[x_0^2]), not MNIST's for every data set: measured once
    when the run is configured, kept in the checkpoint's info, used by the loss and by the denoiser that samples."""
    from diffusion_lib.denoisers import denoiser_for
    from diffusion_lib.training import batch_loss

    fashion = dl.TrainConfig(data="fashion-mnist", objective="edm", steps=1)
    images = dl.load_fashion_mnist(train=True)[0]
    assert fashion.sigma_data == pytest.approx(float(images.double().pow(2).mean().sqrt()), abs=1e-4)
    assert abs(fashion.sigma_data - SIGMA_DATA) > 0.1  # Fashion-MNIST's is not MNIST's
    assert dl.TrainConfig(data="mnist", objective="edm").sigma_data == SIGMA_DATA
    info = fashion.info()
    assert info["sigma_data"] == fashion.sigma_data
    net = dl.build_model("unet", {"base_channels": 8})
    assert denoiser_for(net, info).sigma_data == fashion.sigma_data
    x0, z, noise = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2), torch.randn(2, 1, 28, 28)
    ours = batch_loss(net, fashion, x0, z, noise, None, None)
    assert ours == edm_loss(net, x0, z, noise, None, fashion.sigma_data)
    assert ours != edm_loss(net, x0, z, noise, None, SIGMA_DATA)
    # flow and DDPM have no use for it; an EDM run stored before it was measured used MNIST's value
    assert dl.TrainConfig(data="fashion-mnist").sigma_data is None and "sigma_data" not in dl.TrainConfig().info()
    assert dl.TrainConfig.from_stored({"data": "fashion-mnist", "objective": "edm"}).sigma_data == SIGMA_DATA
    with pytest.raises(ValueError, match="sigma_data"):
        dl.TrainConfig(objective="flow", sigma_data=0.5)
