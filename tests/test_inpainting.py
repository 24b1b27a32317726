"""Inpainting: the known pixels survive exactly, the unknown ones follow the data, bad masks are refused."""

import pytest
import torch

from diffusion_lib import gaussian_eps_fn, ideal_eps_fn, inpaint, make_schedule, named_mask


def test_known_region_is_kept_exactly_and_one_point_data_fills_the_rest():
    s = make_schedule("linear", 1000)
    point = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
    eps_fn = ideal_eps_fn(point.flatten(1), s)
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1  # known pixels differ from the data point
    mask = named_mask("top", x0.shape).double()  # hides the top half: the bottom half is known
    for resample in (1, 3):
        out = inpaint(lambda x, t: eps_fn(x.flatten(1), t).reshape(x.shape), x0, mask, s, steps=20, resample=resample,
                      generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[..., 2:, :], x0[..., 2:, :])  # the known half, exactly
        # the only image the model knows fills the hidden half with its own pixels
        assert torch.allclose(out[..., :2, :], point.expand(3, 1, 4, 4)[..., :2, :], atol=1e-4)


@pytest.mark.parametrize("resample", [1, 3])
def test_gaussian_inpainting_keeps_the_unknown_marginal(resample):
    """Independent pixels: knowing some says nothing about the others, whose law must stay N(mu, var).

    With resample = 3 every step also jumps back (RePaint's q_jump) twice: a wrong jump changes the law.
    """
    s, n = make_schedule("cosine", 1000), 4000
    mu, var = torch.tensor([0.5, -0.5], dtype=torch.float64), 0.09
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = inpaint(gaussian_eps_fn(mu, var, s), x0, mask, s, steps=100, resample=resample,
                  generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0], x0[:, 0])
    assert abs(out[:, 1].mean().item() - mu[1].item()) < 0.02 and abs(out[:, 1].var().item() - var) < 0.015


def test_bad_masks_and_arguments_are_refused():
    s, x0 = make_schedule("linear", 100), torch.zeros(2, 1, 4, 4)
    eps_fn = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="does not broadcast"):
        inpaint(eps_fn, x0, torch.ones(3, 1, 4, 4), s, steps=5)
    with pytest.raises(ValueError, match="only 0"):
        inpaint(eps_fn, x0, torch.full((1, 1, 4, 4), 0.5), s, steps=5)
    with pytest.raises(ValueError, match="resample"):
        inpaint(eps_fn, x0, torch.ones(1, 1, 4, 4), s, steps=5, resample=0)
    with pytest.raises(ValueError, match="unknown mask 'middle'"):
        named_mask("middle", x0.shape)
    assert named_mask("centre", (28, 28)).sum() == 28 * 28 - 14 * 14
