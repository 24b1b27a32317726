"""Chapter 3's theory helpers against independent references: the bound's weight against the KL of the
two Gaussians (torch.distributions), the noised data set's log-density against an explicit mixture, its
score against the library's ideal denoiser (Tweedie's formula), and the denoising view's panels."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Normal, kl_divergence  # noqa: E402

import diffusion_lib as dl  # noqa: E402
from diffusion_lib.course import ch03  # noqa: E402

SCHEDULE = dl.make_schedule("linear", 1000)


def _bound_term(t: int, variance: torch.Tensor | None = None, seed: int = 0):
    """(KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)), ||eps - eps_hat||^2) for random x0, eps, eps_hat in 50 dims.

    The model's mean is the posterior mean at the x0_hat that eps_hat implies (DDPM Eq. 11); its variance is
    `variance[t]`, or the posterior's. The KL comes from torch.distributions, not from the weight's formula.
    """
    generator = torch.Generator().manual_seed(seed)
    x0, eps, eps_hat = torch.randn(3, 1, 50, generator=generator, dtype=torch.float64)
    step = torch.tensor([t])
    xt = dl.q_sample(x0, step, SCHEDULE, eps)
    post_mean, post_var = dl.q_posterior(x0, xt, step, SCHEDULE)
    model_mean, _ = dl.q_posterior(dl.x0_from_eps(xt, step, eps_hat, SCHEDULE), xt, step, SCHEDULE)
    model_var = post_var if variance is None else variance[t].expand_as(post_var)
    kl = kl_divergence(Normal(post_mean, post_var.sqrt().expand_as(post_mean)),
                       Normal(model_mean, model_var.sqrt().expand_as(model_mean))).sum()
    return kl.item(), (eps - eps_hat).pow(2).sum().item()


@pytest.mark.parametrize("t", [1, 2, 10, 300, 999])
def test_bound_weight_turns_the_kl_into_a_weighted_eps_error(t):
    weights = ch03.bound_weight(SCHEDULE)
    kl, sq_error = _bound_term(t)
    assert weights.dtype == torch.float64 and weights.shape == (SCHEDULE.T,)
    assert kl == pytest.approx(weights[t].item() * sq_error, rel=1e-9)


@pytest.mark.parametrize("t", [2, 300, 998])
def test_bound_weight_of_a_neighbouring_step_does_not_fit(t):
    """The check is sharp enough to catch a weight read one timestep off in either direction."""
    weights = ch03.bound_weight(SCHEDULE)
    kl, sq_error = _bound_term(t)
    for other in (t - 1, t + 1):
        assert kl != pytest.approx(weights[other].item() * sq_error, rel=1e-6)


def test_bound_weight_with_another_model_variance_is_the_mean_part_of_the_kl():
    """With sigma_t^2 = beta_t the two variances differ, so the KL has a constant part; its eps_hat-dependent
    part, KL(eps_hat) - KL(eps_hat = eps), is still w_t ||eps - eps_hat||^2 with w_t for that variance."""
    weights = ch03.bound_weight(SCHEDULE, SCHEDULE.betas)
    for t in (1, 400, 999):
        generator = torch.Generator().manual_seed(t)
        x0, eps, eps_hat = torch.randn(3, 1, 50, generator=generator, dtype=torch.float64)
        step = torch.tensor([t])
        xt = dl.q_sample(x0, step, SCHEDULE, eps)
        post_mean, post_var = dl.q_posterior(x0, xt, step, SCHEDULE)
        posterior = Normal(post_mean, post_var.sqrt().expand_as(post_mean))
        model_std = SCHEDULE.betas[t].sqrt().expand_as(post_mean)

        def kl_at(guess):
            model_mean, _ = dl.q_posterior(dl.x0_from_eps(xt, step, guess, SCHEDULE), xt, step, SCHEDULE)
            return kl_divergence(posterior, Normal(model_mean, model_std)).sum().item()

        assert kl_at(eps_hat) - kl_at(eps) == pytest.approx(weights[t].item() * (eps - eps_hat).pow(2).sum().item(), rel=1e-7)
    assert not torch.allclose(weights[1:], ch03.bound_weight(SCHEDULE)[1:])


def test_bound_weight_is_infinite_only_at_the_decoder_step():
    weights = ch03.bound_weight(SCHEDULE)
    assert math.isinf(weights[0].item()) and torch.isfinite(weights[1:]).all() and (weights[1:] > 0).all()


def _explicit_log_density(xt, t, data):
    """log (1/N) sum_i N(xt; sqrt(ab) x^(i), (1 - ab) I), each component's log-density from torch.distributions."""
    ab = SCHEDULE.alpha_bars[t]
    components = Normal(ab.sqrt() * data.flatten(1), (1 - ab).sqrt())  # batch (N, D)
    log_each = components.log_prob(xt.flatten()[None]).sum(1)  # (N,)
    return torch.logsumexp(log_each, 0) - math.log(len(data))


def test_mixture_log_density_matches_an_explicit_mixture_of_gaussians():
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(7, 2, 3, generator=generator, dtype=torch.float64)
    xt = torch.randn(4, 2, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 30, 500, 999])
    got = ch03.mixture_log_density(xt, t, data, SCHEDULE)
    assert got.shape == (4,)
    expected = torch.stack([_explicit_log_density(xt[b], int(t[b]), data) for b in range(4)])
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_mixture_density_integrates_to_one_in_one_dimension():
    data = torch.tensor([[-1.0], [0.3], [0.9]], dtype=torch.float64)
    grid = torch.linspace(-8, 8, 40_001, dtype=torch.float64)[:, None]  # (G, 1)
    for t in (5, 200, 900):
        density = ch03.mixture_log_density(grid, torch.full((len(grid),), t), data, SCHEDULE).exp()
        assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-6)


def test_score_of_the_mixture_gives_the_ideal_denoiser_by_tweedie():
    data = dl.load_mnist(train=False)[0][:40].double()
    generator = torch.Generator().manual_seed(2)
    t = torch.tensor([20, 250, 600, 950])
    xt = dl.q_sample(data[:4] + 0.1 * torch.randn(4, 1, 28, 28, generator=generator, dtype=torch.float64), t, SCHEDULE,
                     torch.randn(4, 1, 28, 28, generator=generator, dtype=torch.float64)).requires_grad_(True)
    score, = torch.autograd.grad(ch03.mixture_log_density(xt, t, data, SCHEDULE).sum(), xt)
    ab = SCHEDULE.alpha_bars[t].reshape(-1, 1, 1, 1)
    xt = xt.detach()
    tweedie_x0 = (xt + (1 - ab) * score) / ab.sqrt()
    assert torch.allclose(tweedie_x0, dl.ideal_x0(xt, t, data, SCHEDULE), atol=1e-8)
    assert torch.allclose(-(1 - ab).sqrt() * score, dl.ideal_eps_fn(data, SCHEDULE)(xt, t), atol=1e-8)


def test_score_of_one_point_is_the_gaussian_score():
    point = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    xt = torch.tensor([[0.2, 0.3], [-2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([100, 700])
    score, = torch.autograd.grad(ch03.mixture_log_density(xt, t, point, SCHEDULE).sum(), xt)
    ab = SCHEDULE.alpha_bars[t][:, None]
    assert torch.allclose(score, -(xt.detach() - ab.sqrt() * point) / (1 - ab), atol=1e-12)


def test_mixture_log_density_rejects_a_timestep_out_of_range():
    with pytest.raises(ValueError, match="timestep out of range"):
        ch03.mixture_log_density(torch.zeros(1, 2), torch.tensor([1000]), torch.zeros(3, 2), SCHEDULE)


def test_denoise_view_shows_the_clean_digit_next_to_each_x0_hat():
    data = dl.load_mnist(train=False)[0][:20].double()
    x0, noise = data[:1], torch.randn(1, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    denoisers = {"ideal": dl.ideal_eps_fn(data, SCHEDULE), "zero": lambda x, t: torch.zeros_like(x)}
    view = ch03.denoise_view(5, x0, noise, denoisers, SCHEDULE)
    clean = (x0[0, 0].numpy() + 1) / 2
    assert len(view.axes) == 10  # 5 panels per denoiser
    for row in range(2):
        axes = view.axes[5 * row: 5 * row + 5]
        assert axes[4].get_title() == "clean x0" and np.allclose(axes[4].images[0].get_array(), clean)
        assert axes[3].get_title().startswith("x0_hat (MSE to x0")
    assert np.allclose(view.axes[3].images[0].get_array(), clean, atol=1e-3)  # on its own data the ideal x0_hat is x0
    assert view.axes[3].get_title() == "x0_hat (MSE to x0 0.000)"
    assert not np.allclose(view.axes[8].images[0].get_array(), clean, atol=1e-2)  # eps = 0 leaves x_t / sqrt(ab), not x0


def test_error_plot_has_no_eps_zero_line_that_would_answer_exercise_3():
    ch03.plot_error_by_timestep([0, 500, 999], {"a": [0.5, 0.1, 0.01], "b": [2.0, 0.2, 0.02]}, "MSE", "title")
    ax = plt.gcf().axes[0]
    assert [line.get_label() for line in ax.lines] == ["a", "b"]
    plt.close("all")
