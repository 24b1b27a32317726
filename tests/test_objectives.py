"""The objectives table, and the objective added through it alone: consistency training without a teacher ("ct")."""

import pytest
import torch

import diffusion_lib as dl
from diffusion_lib.__main__ import build_parser
from diffusion_lib.objectives import CT_GRID, OBJECTIVES, consistency_training_loss, is_flow, objective_of


def test_ct_loss_compares_neighbouring_times_on_the_same_noise():
    """With v = 0, f(x, s) = x, so the loss is ||x_s - x_r||^2 = (s - r)^2 ||eps - x_0||^2 with s - r = 1 / N exactly:
    one grid step. A pair two steps apart, or on different noise, gives another number."""
    torch.manual_seed(0)
    x0, noise = torch.randn(64, 2), torch.randn(64, 2)
    n = torch.randint(1, CT_GRID + 1, (64,)).float()
    still = lambda x, t, labels=None: torch.zeros_like(x)
    want = ((noise - x0) ** 2).mean() / CT_GRID**2
    assert consistency_training_loss(still, x0, n, noise) == pytest.approx(float(want), rel=1e-5)


def test_ct_loss_vanishes_for_the_exact_consistency_function():
    """For one-point data x*, v(x, s) = (x - x*) / s is the exact velocity and f(x, s) = x* at every s: every pair
    agrees (at n = 1 the target is f(x_0, 0) = x_0 = x*). A network one grid step wrong does not: its loss is small
    (neighbours still nearly agree) but five orders of magnitude above round-off."""
    x_star = torch.tensor([[0.5, -1.0]])
    exact = lambda x, t, labels=None: (x - x_star) / (t / 1000).clamp(min=1e-12)[:, None]
    x0, noise = x_star.expand(16, 2), torch.randn(16, 2)
    n = torch.arange(1, 17).float()
    assert consistency_training_loss(exact, x0, n, noise) < 1e-10
    shifted = lambda x, t, labels=None: exact(x, t + 1000 / CT_GRID)  # answers as if one step noisier
    assert consistency_training_loss(shifted, x0, n, noise) > 1e-6


def test_ct_models_sample_in_one_call_closer_to_the_data_than_a_flow_models_one_euler_step():
    """Trained for the same steps on two moons, the teacherless consistency model's one network call lands nearer
    the data (mean distance to the nearest of 2,000 points) than the flow model's one Euler step, which lands on
    the blurred mean of the data (chapter 8) -- and both nearer than the noise they start from."""
    data = dl.make_toy("moons", 2000, torch.Generator().manual_seed(1))
    distance = lambda x: torch.cdist(x, data).min(1).values.mean().item()
    one_call = {}
    for objective in ("ct", "flow"):
        config = dl.TrainConfig(data="moons", objective=objective, steps=300, batch_size=256, lr=3e-3, seed=0,
                                save_every=10**6, model={"hidden": 64, "layers": 2})
        result = dl.train(config, progress=False)
        info = config.info()
        samples, _ = dl.generate(result.ema_model, info, 2000, None if objective == "ct" else "euler", 1, seed=0)
        one_call[objective] = distance(samples)
    assert info["prediction"] == "flow" and is_flow(info)  # the network outputs a velocity on the straight path
    assert one_call["ct"] < 0.8 * one_call["flow"], one_call
    assert one_call["ct"] < 0.9 * distance(torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))), one_call


def test_ct_is_an_objective_everywhere_an_objective_is_named():
    config = dl.TrainConfig(data="moons", objective="ct", steps=1)
    assert config.info()["objective"] == "ct" and objective_of(config.info()) is OBJECTIVES["ct"]
    assert dl.pipeline.default_sampler(config.info()) == ("consistency", 1)
    args = build_parser().parse_args(["train", "--data", "moons", "--objective", "ct", "--steps", "1", "--out", "x"])
    assert args.objective == "ct"
    with pytest.raises(ValueError, match="prediction 'eps' is a target of objective ddpm"):
        dl.TrainConfig(data="moons", objective="ct", prediction="eps")
