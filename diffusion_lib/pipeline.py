"""From a checkpoint to samples in one call: what the command line and the chapters use.

`generate` is load, denoise, guide, sample, decode: the checkpoint's network becomes a denoiser
(`denoisers.denoiser_for`), guidance wraps it (`guidance.guided`), the sampler named walks the levels
it visits (`samplers.sampler_levels`: DDPM's discrete steps for ddpm, ddim and dpm-solver++, the
network's own path for heun, euler and consistency), and a latent model's result is decoded
(`latent.decode`). Nothing here is new mathematics; it only wires the pieces together, and checks
once, for the API and the command line alike, what a caller passes in (`check_*`).
"""

from __future__ import annotations

import math

import torch

from .checkpoint import ModelInfo, check_sampler_info
from .data import is_image_data
from .denoisers import bound, chunked, clipped, denoiser_for, eps_fn_of
from .guidance import AutoGuided, guided
from . import latent
from .inpainting import inpaint
from .models import DENOISERS, arch_of
from .objectives import DEFAULT_SAMPLER, check_flow, objective_of  # noqa: F401 (DEFAULT_SAMPLER: re-exported)
from .samplers import (ALL_SAMPLERS, ODE_SAMPLERS, SAMPLERS, Trajectory, check_eta, flow_levels, sample,
                       sampler_levels, start_noise)
from .runtime import autocast
from .schedules import make_schedule
from .text import tokenize

DEFAULT_BATCH = 500  # images per network call in `generate`: memory stays flat however many samples are drawn


def default_sampler(info: dict) -> tuple[str, int]:
    """(sampler, steps) `generate` uses when none is named: a distilled student's own (`distill.student_info`),
    else its objective's (`objectives.Objective.sampler`: DDIM-50 for DDPM, Heun-18 for EDM and flow)."""
    meta = ModelInfo.read(info)
    return meta.sampler or objective_of(meta).sampler


# ------------------------------------------------------------------ what the API and the command line both check


def check_scale(w, what: str = "guidance") -> None:
    """A guidance scale: None (no guidance) or a finite number >= 0."""
    if w is not None and not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0):
        raise ValueError(f"{what} must be a finite number >= 0 (1 = the model alone), got {w!r}")


def check_fraction(value, what: str, meaning: str) -> None:
    """A number in [0, 1], such as image_to_image's strength; `meaning` says what its ends do."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
        raise ValueError(f"{what} must lie in [0, 1] ({meaning}), got {value!r}")


def check_images(images, shape: tuple[int, ...], what: str = "images") -> None:
    """Images a model reads: a float tensor (N, *shape), finite, in [-1, 1] (0..255 pixels are refused, not guessed)."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a float tensor in [-1, 1], got {kind}: convert 0..255 pixels with "
                         "torch.as_tensor(p).float() / 127.5 - 1")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"{what} must have shape (N, {', '.join(map(str, shape))}), the model's, got "
                         f"{tuple(images.shape)}")
    if not bool(images.isfinite().all()) or images.min() < -1 or images.max() > 1:
        low, high = float(images.nan_to_num().min()), float(images.nan_to_num().max())
        raise ValueError(f"{what} must be finite and lie in [-1, 1] (got values in [{low:.3g}, {high:.3g}]"
                         f"{', and NaN or infinity' if not bool(images.isfinite().all()) else ''}): scale 0..255 "
                         "pixels as p / 127.5 - 1")


def check_finite(samples: torch.Tensor) -> torch.Tensor:
    """Samples must be finite before anyone uses or saves them."""
    if not bool(samples.isfinite().all()):
        raise ValueError("sampling produced NaN or infinite values: the guidance scale may be far too large, or the "
                         "checkpoint is damaged; lower the scale, or retrain the model")
    return samples


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


def image_shape(model) -> tuple[int, int, int]:
    """(channels, height, width) of the images an image model generates (28x28 where its config does not say)."""
    size = model.config.image_size or 28
    return model.config.image_channels, size, size


def conditioned(model, info, n: int, guidance=None, labels=None, seed: int = 0, prompts=None,
                negative_prompt: str | None = None, batch_size: int = DEFAULT_BATCH, schedule=None):
    """The checkpoint's denoiser (`info`: its dict or `ModelInfo`) as a sampler calls it, `fn(x, level)`, guided for
    a conditional model; and its labels.

    A text model takes `prompts` (n captions) and returns their token ids as its "labels"; a `negative_prompt`
    takes the empty caption's place in guidance (so it steers only where w != 1). A class-conditional model
    without `labels` draws them from `seed`. The network sees at most `batch_size` rows a call (`chunked`).
    """
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},), one per sample, got {tuple(labels.shape)}")
    denoiser = chunked(denoiser_for(model, info, schedule), batch_size)
    device = next(model.parameters()).device
    w = 1.0 if guidance is None else guidance
    if getattr(model.config, "text_dim", None):
        if labels is not None:
            raise ValueError("this model reads captions, not labels: pass prompts (--prompt \"a thick seven\")")
        if prompts is None or len(prompts) != n:
            raise ValueError(f"a text model needs {n} prompts, one per sample (got {None if prompts is None else len(prompts)})")
        ids = tokenize(list(prompts))[0].to(device)
        return guided(denoiser, ids, w, null_label=tokenize([negative_prompt or ""])[0]), ids
    if prompts is not None or negative_prompt is not None:
        raise ValueError("prompts and negative prompts need a text model (trained with --text)")
    num_classes = model.config.num_classes
    if num_classes and labels is not None and (labels.is_floating_point() or labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be integers in 0..{num_classes - 1} (the null class {num_classes} is what "
                         f"guidance adds itself), got {labels.dtype} values in [{labels.min()}, {labels.max()}]")
    if num_classes:
        if labels is None:
            labels = torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))
        return guided(denoiser, labels.to(device), w, null_label=num_classes), labels
    if labels is not None or guidance is not None:
        raise ValueError("this model is unconditional: labels and guidance need a --conditional checkpoint")
    return bound(denoiser), None


AUTOGUIDE_SCALE = 1.5  # the command line's default autoguidance scale (benchmarks/RESULTS.md, section committed)


def autoguided(model, info: dict, weak, weak_info: dict, w: float = AUTOGUIDE_SCALE) -> AutoGuided:
    """`model` guided by the weaker `weak` (autoguidance, `guidance.AutoGuided`); sample it with `info`.

    Both checkpoints must describe the same parametrisation: objective, network output, schedule, T and data.
    An early snapshot of the same run (`pretrained_snapshots`) is a weak model that always fits.
    """
    if arch_of(weak) not in DENOISERS:
        raise ValueError(f"the weak model is a {type(weak).__name__}, not a diffusion model: give an earlier snapshot "
                         "of the same run, or another checkpoint trained the same way")
    check_sampler_info(weak_info, "the weak model's checkpoint")
    for key in ("objective", "prediction", "schedule", "T", "data"):
        mine, theirs = (objective_of(i).name if key == "objective" else i.get(key) for i in (info, weak_info))
        if mine != theirs:
            raise ValueError(f"the weak model must be trained like the model: its {key} is {theirs!r}, the model's "
                             f"{mine!r}; use an earlier snapshot of the same run")
    return AutoGuided(model, weak, w)


def generate(model, info: dict, n: int, sampler=None, steps=None, eta=0.0, guidance=None, labels=None,
             seed=0, progress=None, return_trajectory=False, prompts=None, batch_size: int = DEFAULT_BATCH,
             precision: str = "fp32", negative_prompt: str | None = None, decode: bool = True):
    """Sample n data points from a trained denoiser whose checkpoint `info` came with it.

    `sampler` is one of ddpm, ddim, dpm-solver++ (any model) or heun, euler (models trained with
    the edm or flow objective) or consistency (flow models; `samplers.sample_consistency`); None takes
    `default_sampler(info)` and `steps` None that sampler's default (for a distilled student, its own
    steps). heun with N steps makes 2N - 1 network calls.
    `labels` (n,) LongTensor for a class-conditional model (None: all labels drawn uniformly);
    `guidance` is the classifier-free guidance scale w (None: 1, the plain conditional model).
    A text model (trained with --text) takes `prompts`, n captions such as "a thick seven", and
    returns their token ids in place of labels; `negative_prompt` replaces the empty caption in guidance.
    A latent model (trained with --latent) samples latents and returns them decoded to images (`latent.decode`),
    or as latents with `decode=False`; its trajectory holds latents.
    The network sees at most `batch_size` images per call (`chunked`); the samples do not depend on it.
    For heun, euler and consistency the trajectory's timesteps are the noise levels (sigma or s), not DDPM steps.
    `precision="bf16"` runs the network under bfloat16 autocast (about 2x faster on CPUs with AMX; the
    sampler's own arithmetic stays float32). Images come back clipped to [-1, 1].
    Returns (samples, labels or None[, trajectory]).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    meta = ModelInfo.read(info, "the model's checkpoint")
    check_scale(guidance)
    if not (isinstance(eta, (int, float)) and 0 <= eta <= 1):
        raise ValueError(f"eta must be a number in [0, 1] (0 deterministic DDIM, 1 DDPM-like), got {eta!r}")
    if sampler is None:
        sampler, default_steps = default_sampler(meta)
        steps = default_steps if steps is None and (sampler in ODE_SAMPLERS or meta.sampler) else steps
    if sampler not in ALL_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(ALL_SAMPLERS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    check_eta(sampler, eta)
    schedule = make_schedule(meta.schedule, meta.T)
    levels = sampler_levels(sampler, schedule, steps, objective_of(meta).levels)
    denoiser, labels = conditioned(model, meta, n, guidance, labels, seed, prompts, negative_prompt, batch_size,
                                   schedule)
    is_image, pixels = is_image_data(meta.data), meta.latent is None
    if is_image and pixels and sampler in SAMPLERS:  # DDPM's samplers clip x0_hat to the pixels' range
        denoiser = clipped(denoiser)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    x = start_noise(levels, (n, *image_shape(model)) if is_image else (n, model.config.data_dim), generator, device)
    trajectory = Trajectory() if return_trajectory else None
    with autocast(device, precision == "bf16"):
        samples = sample(sampler, denoiser, x, levels, generator, eta, trajectory, progress)
    samples = check_finite(samples.float())
    if not pixels and decode:
        samples = latent.decode(info, samples)
    elif is_image and pixels:
        samples = samples.clamp(-1, 1)
    return (samples, labels, trajectory) if return_trajectory else (samples, labels)


def inpaint_images(model, info: dict, images: torch.Tensor, mask: torch.Tensor, steps: int = 50, eta: float = 0.0,
                   guidance=None, labels=None, seed: int = 0, resample: int = 1, prompts=None,
                   batch_size: int = DEFAULT_BATCH):
    """Fill the pixels of `images` (N, C, H, W) (the model's shape) where `mask` is 0 (see `inpainting.inpaint`).

    A conditional model can be asked for `labels` (a text model for `prompts`) with `guidance`, as in `generate`.
    Returns (completed images clipped to [-1, 1], labels or None).
    """
    check_sampler_info(info, "the model's checkpoint")
    if not is_image_data(info["data"]):
        raise ValueError(f"inpainting needs an image model, not one of 2-D points ({info['data']})")
    if "latent" in info:
        raise ValueError("inpainting here replaces pixels, and this model makes latents: use a pixel model, or "
                         "image_to_image for a latent one")
    check_images(images, image_shape(model))
    check_scale(guidance)
    if not isinstance(mask, torch.Tensor) or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be a tensor of 0s (pixels to fill) and 1s (pixels to keep), e.g. from named_mask")
    schedule = make_schedule(info["schedule"], info["T"])
    device = next(model.parameters()).device
    denoiser, labels = conditioned(model, info, len(images), guidance, labels, seed, prompts, None, batch_size,
                                   schedule)
    out = inpaint(eps_fn_of(denoiser, schedule), images.to(device), mask.to(device), schedule, steps, eta, resample,
                  generator=torch.Generator(device).manual_seed(seed), clip_x0=True)
    return out.clamp(-1, 1), labels


def image_to_image(model, info: dict, images: torch.Tensor, prompts, strength: float = 0.6, steps: int = 20,
                   guidance: float | None = None, negative_prompt: str | None = None, seed: int = 0,
                   sampler: str = "euler", batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, Sec. 3): noise `images` (N, C, H, W) part-way and solve back under `prompts`.

    For a flow model, x_s = (1 - s) x_0 + s eps at s = `strength` (0: the image unchanged, 1: pure noise,
    an ordinary sample), then from s to 0 in `steps` even steps with `sampler`, one of the ODE samplers (euler,
    heun, consistency). A latent model
    does this to the image's latents (`latent.encode`) and decodes the result. `prompts`: n captions for a
    text model (None for any other); `guidance` and `negative_prompt` as in `generate`.
    Returns images clipped to [-1, 1], (N, C, H, W).
    """
    check_sampler_info(info, "the model's checkpoint")
    check_flow(info, "image_to_image")
    if sampler not in ODE_SAMPLERS:
        raise ValueError(f"image_to_image walks the flow's own times: choose sampler {', '.join(ODE_SAMPLERS)}")
    check_fraction(strength, "strength", "0 keeps the image, 1 ignores it")
    check_scale(guidance)
    check_images(images, latent.pixel_shape(info) if "latent" in info else image_shape(model))
    device = next(model.parameters()).device
    x0 = latent.encode(info, images) if "latent" in info else images
    x0 = x0.to(device)
    denoiser, _ = conditioned(model, info, len(images), guidance, None, seed, prompts, negative_prompt, batch_size)
    generator = torch.Generator(device).manual_seed(seed)
    x = (1 - strength) * x0 + strength * torch.randn(x0.shape, generator=generator, device=device)
    if strength > 0:
        x = check_finite(sample(sampler, denoiser, x, flow_levels(steps, top=strength), generator))
    out = latent.decode(info, x) if "latent" in info else x
    return out.clamp(-1, 1)
