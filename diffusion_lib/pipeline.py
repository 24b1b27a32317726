"""From a checkpoint to samples in one call: what the command line and the chapters use.

`generate` reads the schedule, parametrisation and data kind from the checkpoint's info,
builds the `eps_fn` (with classifier-free guidance for a class-conditional model) and runs a
sampler from `samplers`. Nothing here is new mathematics; it only wires the pieces together.
"""

from __future__ import annotations

import torch

from .guidance import guided_eps_fn
from .inpainting import inpaint
from .models import as_eps_fn, as_eps_model
from .samplers import SAMPLERS, sample_loop
from .schedules import make_schedule
from .text import tokenize


def parse_labels(text: str | None, n: int, num_classes: int | None) -> torch.Tensor | None:
    """'0,3,7' -> those labels repeated to n; 'all' -> 0, 1, ..., cycling; None -> None."""
    if text is None:
        return None
    if not num_classes:
        raise ValueError("labels were given, but this model is unconditional: drop --labels")
    if text == "all":
        values = list(range(num_classes))
    else:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"labels must be 'all' or comma-separated integers like 0,3,7, got {text!r}") from None
    if any(v < 0 or v >= num_classes for v in values):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {text!r}")
    return torch.tensor([values[i % len(values)] for i in range(n)], dtype=torch.long)


def _eps_fn(model, info: dict, schedule, n: int, guidance, labels, seed: int, prompts=None):
    """The checkpoint's noise predictor as `eps_fn(x, t)`, guided for a conditional model; and the labels used.

    A text model takes `prompts` (n captions) and returns their token ids as its "labels".
    """
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},), one per sample, got {tuple(labels.shape)}")
    device = next(model.parameters()).device
    eps_model = as_eps_model(model, schedule, info["prediction"])
    w = 1.0 if guidance is None else guidance
    if getattr(model.config, "text_dim", None):
        if labels is not None:
            raise ValueError("this model reads captions, not labels: pass prompts (--prompt \"a thick seven\")")
        if prompts is None or len(prompts) != n:
            raise ValueError(f"a text model needs {n} prompts, one per sample (got {None if prompts is None else len(prompts)})")
        ids = tokenize(list(prompts))[0].to(device)
        return guided_eps_fn(eps_model, ids, w, null_label=tokenize([""])[0]), ids
    if prompts is not None:
        raise ValueError("prompts need a text model (trained with --text)")
    num_classes = model.config.num_classes
    if num_classes:
        if labels is None:
            labels = torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))
        return guided_eps_fn(eps_model, labels.to(device), w, null_label=num_classes), labels
    if labels is not None or guidance is not None:
        raise ValueError("this model is unconditional: labels and guidance need a --conditional checkpoint")
    return as_eps_fn(model, schedule, info["prediction"]), None


def generate(model, info: dict, n: int, sampler="ddim", steps=None, eta=0.0, guidance=None, labels=None,
             seed=0, progress=None, return_trajectory=False, prompts=None):
    """Sample n data points from a trained denoiser whose checkpoint `info` came with it.

    `labels` (n,) LongTensor for a class-conditional model (None: all labels drawn uniformly);
    `guidance` is the classifier-free guidance scale w (None: 1, the plain conditional model).
    A text model (trained with --text) takes `prompts`, n captions such as "a thick seven", and
    returns their token ids in place of labels.
    Images come back clipped to [-1, 1]. Returns (samples, labels or None[, trajectory]).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    schedule = make_schedule(info["schedule"], info["T"])
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    is_image = info["data"] == "mnist"
    shape = (n, model.config.image_channels, 28, 28) if is_image else (n, model.config.data_dim)
    eps_fn, labels = _eps_fn(model, info, schedule, n, guidance, labels, seed, prompts)
    out = sample_loop(eps_fn, shape, schedule, sampler, steps, eta, generator=generator, device=device,
                      clip_x0=is_image, return_trajectory=return_trajectory, progress=progress)
    samples, trajectory = out if return_trajectory else (out, None)
    if is_image:
        samples = samples.clamp(-1, 1)
    return (samples, labels, trajectory) if return_trajectory else (samples, labels)


def inpaint_images(model, info: dict, images: torch.Tensor, mask: torch.Tensor, steps: int = 50, eta: float = 0.0,
                   guidance=None, labels=None, seed: int = 0, resample: int = 1, prompts=None):
    """Fill the pixels of `images` (N, 1, 28, 28) where `mask` is 0 (see `inpainting.inpaint`).

    A conditional model can be asked for `labels` (a text model for `prompts`) with `guidance`, as in `generate`.
    Returns (completed images clipped to [-1, 1], labels or None).
    """
    if info["data"] != "mnist":
        raise ValueError("inpainting needs an image model (trained with --data mnist)")
    if images.ndim != 4 or images.shape[1:] != (model.config.image_channels, 28, 28):
        raise ValueError(f"images must have shape (N, {model.config.image_channels}, 28, 28), got {tuple(images.shape)}")
    schedule = make_schedule(info["schedule"], info["T"])
    device = next(model.parameters()).device
    eps_fn, labels = _eps_fn(model, info, schedule, len(images), guidance, labels, seed, prompts)
    out = inpaint(eps_fn, images.to(device), mask.to(device), schedule, steps, eta, resample,
                  generator=torch.Generator(device).manual_seed(seed), clip_x0=True)
    return out.clamp(-1, 1), labels
