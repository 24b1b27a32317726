"""Inpainting with an unconditional (or conditional) denoiser: fill the unknown pixels of an image.

The replacement method (Song et al. 2021, "Score-based generative modeling", App. I; Lugmayr
et al. 2022, "RePaint"): sample as usual, but after every step overwrite the known pixels with
the original image noised to the same timestep, q(x_{t'} | x_0), so that the model fills the
rest in agreement with them. RePaint's resampling jumps back from t' to t with the forward
process, q(x_t | x_{t'}), and repeats the step `resample` times, giving the two regions more
chances to harmonise.

| code     | meaning                                                   |
| -------- | --------------------------------------------------------- |
| `mask`   | 1 where the pixel is known (kept), 0 where it is filled in |
| `x0`     | the image whose known pixels are kept, (B, C, H, W)        |
"""

from __future__ import annotations

import torch

from .forward import q_sample
from .discrete import _alpha_bar, ddim_step, ddim_timesteps
from .schedules import Schedule

MASKS = ("top", "bottom", "left", "right", "centre")
INPAINT_SAMPLERS = ("ddim",)  # inpainting replaces pixels along DDIM's steps (eta 1: DDPM-like)


def named_mask(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A (1, 1, H, W) mask that hides (sets to 0) the named region of an image of `shape` (..., H, W)."""
    if name not in MASKS:
        raise ValueError(f"unknown mask {name!r}: choose one of {', '.join(MASKS)}")
    H, W = shape[-2:]
    mask = torch.ones(1, 1, H, W)
    region = {"top": (slice(0, H // 2), slice(None)), "bottom": (slice(H // 2, None), slice(None)),
              "left": (slice(None), slice(0, W // 2)), "right": (slice(None), slice(W // 2, None)),
              "centre": (slice(H // 4, H - H // 4), slice(W // 4, W - W // 4))}[name]
    mask[(..., *region)] = 0
    return mask


def q_jump(x_prev: torch.Tensor, t_prev: torch.Tensor, t: torch.Tensor, schedule: Schedule,
           noise: torch.Tensor) -> torch.Tensor:
    """Noise x_{t'} forward to the later step t, a sample of q(x_t | x_{t'}) (RePaint's jump back, Lugmayr et al. Eq. 10):

    x_t = sqrt(ab_t / ab_t') x_{t'} + sqrt(1 - ab_t / ab_t') eps, for t > t' (or t' = -1, the clean image).
    Shapes: x_prev, noise (B, ...); t_prev, t (B,).
    """
    ratio = _alpha_bar(schedule, t, x_prev) / _alpha_bar(schedule, t_prev, x_prev)
    return ratio.sqrt() * x_prev + (1 - ratio).sqrt() * noise


def inpaint(eps_fn, x0: torch.Tensor, mask: torch.Tensor, schedule: Schedule, steps: int = 50, eta: float = 0.0,
            resample: int = 1, generator: torch.Generator | None = None, clip_x0: bool = False) -> torch.Tensor:
    """Fill the pixels of x0 where `mask` is 0, keeping those where it is 1, with DDIM (`eta`) over `steps` steps.

    `eps_fn(x, t)` is any noise predictor (wrap a conditional model with `guided_eps_fn` to ask
    for a class). `mask` broadcasts against x0 and holds only 0s and 1s. `resample` >= 1 is
    RePaint's number of tries per step. The known pixels of the result equal x0 exactly.
    """
    try:
        broadcast = torch.broadcast_shapes(mask.shape, x0.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != x0.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the images' {tuple(x0.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 (fill in) and 1 (keep)")
    if not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be a positive integer, got {resample!r}")
    mask = mask.to(x0.device, x0.dtype)

    def randn():
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def known_at(t_int: int) -> torch.Tensor:
        if t_int < 0:
            return x0
        return q_sample(x0, torch.full((len(x0),), t_int, device=x0.device), schedule, randn())

    timesteps = ddim_timesteps(schedule.T, steps)
    x = mask * known_at(timesteps[0]) + (1 - mask) * randn()
    for t_int, t_prev_int in zip(timesteps, timesteps[1:] + [-1]):
        t = torch.full((len(x0),), t_int, dtype=torch.long, device=x0.device)
        t_prev = torch.full_like(t, t_prev_int)
        for attempt in range(resample):
            with torch.no_grad():
                eps = eps_fn(x, t)
            x_prev, _ = ddim_step(eps, x, t, t_prev, schedule, eta, generator=generator, clip_x0=clip_x0)
            x_prev = mask * known_at(t_prev_int) + (1 - mask) * x_prev
            if attempt == resample - 1 or t_prev_int < 0:
                break
            x = q_jump(x_prev, t_prev, t, schedule, randn())  # back up to t and try the step again
        x = x_prev
    return x
