"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around a conditional model.

Code name -> paper symbol:

| code         | symbol                                                   |
| ------------ | -------------------------------------------------------- |
| `w`          | guidance scale w (this library uses the form of Eq. 6 written as below) |
| `eps_cond`   | epsilon_theta(x_t, c)                                    |
| `eps_uncond` | epsilon_theta(x_t, null), the same network given the null label |

    eps = eps_uncond + w * (eps_cond - eps_uncond)

w = 0 is the unconditional model, w = 1 the plain conditional model, w > 1 pushes samples
further towards what makes the label likely (sharper, less diverse). The paper's own
guidance weight is w - 1 in this form. Samplers never know guidance is happening: they
receive an ordinary `eps_fn(xt, t)` (`guided_eps_fn`, chapters 6-7) or an ordinary denoiser
(`guided`, what `generate` uses), which applies the same rule to x0_hat and eps_hat alike.

`AutoGuided` is the same rule with a *weaker model* in place of the unconditional branch
(autoguidance, Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):

    out = out_weak + w * (out_model - out_weak)

It needs no labels, so it also guides an unconditional model; the weak model can be an early
snapshot of the same training run.
"""

from __future__ import annotations

import torch
from torch import nn


def guided_eps_fn(model_eps, labels: torch.Tensor, w: float, null_label: int | torch.Tensor):
    """Build `eps_fn(xt, t)` for classifier-free guidance at scale `w`.

    `model_eps(xt, t, labels)` returns the model's eps (B, ...); `labels` (B,) are the requested
    classes; `null_label` is the class index the model was trained to read as "no label".
    For a text model, `labels` are caption token ids (B, L) and `null_label` the ids of the empty
    caption (1, L) (`text.tokenize([""], L)[0]`). Both branches run in one batched call of size 2B.
    Guidance is linear in the model's output, so `model_eps` may return anything affine in eps
    (x0, v, EDM's D) or an (eps, x0_hat) pair, and the same formula applies to each part.
    """
    return _guided(model_eps, labels, w, null_label)


def guided(denoiser, labels: torch.Tensor, w: float, null_label: int | torch.Tensor):
    """Classifier-free guidance around a `denoisers.Denoiser`: `fn(x, level)` -> the same rule applied to x0_hat and
    to eps_hat (both are affine in the network's output, so guiding either guides the other). As `guided_eps_fn`."""
    return _guided(denoiser, labels, w, null_label)


def _guided(call, labels: torch.Tensor, w: float, null_label):
    """`fn(x, when)` = call(x, when, null) + w (call(x, when, labels) - call(x, when, null)), both in one batched call;
    `when` is a timestep tensor (B,) (doubled with x) or a noise level (shared); outputs may be pairs."""
    null = _null_labels(labels, w, null_label)

    def fn(x, when):
        if w == 1:
            return call(x, when, labels)
        if w == 0:
            return call(x, when, null)
        both = torch.cat([when, when]) if isinstance(when, torch.Tensor) else when
        out = call(torch.cat([x, x]), both, torch.cat([labels, null]))
        if isinstance(out, tuple):
            return tuple(_combine(*part.chunk(2), w) for part in out)
        return _combine(*out.chunk(2), w)

    return fn


def _null_labels(labels: torch.Tensor, w: float, null_label: int | torch.Tensor) -> torch.Tensor:
    """The "no label" input for each row: the null class, or a text model's empty (or negative) caption."""
    if w < 0:
        raise ValueError(f"guidance scale w must be >= 0 (0 = unconditional, 1 = conditional), got {w}")
    if isinstance(null_label, torch.Tensor):
        return null_label.to(labels.device).expand_as(labels)
    return torch.full_like(labels, null_label)


def _combine(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    return uncond + w * (cond - uncond)


class AutoGuided(nn.Module):
    """`model` guided by a weaker `weak` model at scale `w` (autoguidance): a network like the two it wraps.

    The rule is applied to the networks' raw outputs. Every parametrisation here (eps, x0, v, the flow's
    velocity, EDM's F) turns that output into eps, x0 or D by an affine map whose coefficients depend
    only on x_t and t, and the weights 1 - w and w sum to 1, so guiding the raw outputs guides each of
    those by the same rule. Both models must read the same parametrisation (`pipeline.autoguided` checks
    their checkpoints). w = 1 is `model` alone (one call per step); w > 1 two calls.
    """

    def __init__(self, model: nn.Module, weak: nn.Module, w: float):
        super().__init__()
        if not w >= 0:
            raise ValueError(f"autoguidance scale w must be >= 0 (1 = the model alone, >1 guided), got {w}")
        for field in ("image_channels", "image_size", "num_classes", "text_dim", "data_dim"):
            mine, theirs = _input_field(model.config, field), _input_field(weak.config, field)
            if mine != theirs:
                raise ValueError(f"the weak model must take the same inputs as the model: {field} is "
                                 f"{theirs} there, {mine} here")
        self.model, self.weak, self.w, self.config = model, weak, float(w), model.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(x, t, labels)
        if self.w == 1:
            return out
        return _combine(out, self.weak(x, t, labels), self.w)


def _input_field(config, field: str):
    """A config's input field as the network reads it: a U-Net's image_size None (older checkpoints) means 28."""
    value = getattr(config, field, None)
    return 28 if field == "image_size" and value is None and hasattr(config, "image_channels") else value
