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
receive an ordinary `eps_fn(xt, t)`.
"""

from __future__ import annotations

import torch


def guided_eps_fn(model_eps, labels: torch.Tensor, w: float, null_label: int | torch.Tensor):
    """Build `eps_fn(xt, t)` for classifier-free guidance at scale `w`.

    `model_eps(xt, t, labels)` returns the model's eps (B, ...); `labels` (B,) are the requested
    classes; `null_label` is the class index the model was trained to read as "no label".
    For a text model, `labels` are caption token ids (B, L) and `null_label` the ids of the empty
    caption (1, L) (`text.tokenize([""], L)[0]`). Both branches run in one batched call of size 2B.
    Guidance is linear in the model's output, so `model_eps` may return anything affine in eps
    (x0, v, EDM's D) or an (eps, x0_hat) pair, and the same formula applies to each part.
    """
    if w < 0:
        raise ValueError(f"guidance scale w must be >= 0 (0 = unconditional, 1 = conditional), got {w}")
    if isinstance(null_label, torch.Tensor):
        null = null_label.to(labels.device).expand_as(labels)
    else:
        null = torch.full_like(labels, null_label)

    def eps_fn(xt, t):
        if w == 1:
            return model_eps(xt, t, labels)
        if w == 0:
            return model_eps(xt, t, null)
        out = model_eps(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([labels, null]))
        if isinstance(out, tuple):
            return tuple(_combine(*part.chunk(2), w) for part in out)
        return _combine(*out.chunk(2), w)

    return eps_fn


def _combine(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    return uncond + w * (cond - uncond)
