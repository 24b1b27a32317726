"""The model zoo by name, and the adapter from any parametrisation to an `eps_fn` (the chapters' DDPM code; `generate` uses `denoisers`).

| name       | class          | config         | what it models                       |
| ---------- | -------------- | -------------- | ------------------------------------ |
| `unet`     | `UNet`         | `UNetConfig`   | eps (or x0, v) for images            |
| `mlp`      | `MLPDenoiser`  | `MLPConfig`    | eps (or x0, v) for 2-D points        |
| `dit`      | `DiT`          | `DiTConfig`    | the same, by a transformer (MMDiT with text) |
| `pixelcnn` | `PixelCNN`     | `PixelCNNConfig` | Bernoulli logits, pixel by pixel   |
| `classifier` | `Classifier` | `ClassifierConfig` | class logits (the judge of samples) |
| `vae`      | `VAE`          | `VAEConfig`    | images to latents and back (latent diffusion) |
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .autoencoder import VAE, VAEConfig
from .classifier import Classifier, ClassifierConfig
from .dit import DiT, DiTConfig
from .continuous import as_eps_model as continuous_eps_model
from .forward import PREDICTIONS, to_eps, to_eps_x0
from .mlp import MLPConfig, MLPDenoiser
from .pixelcnn import PixelCNN, PixelCNNConfig
from .schedules import Schedule
from .unet import UNet, UNetConfig

DENOISERS = ("unet", "mlp", "dit")  # the architectures that are diffusion models (the others: pixelcnn, classifier, vae)
ARCHITECTURES = {"unet": (UNet, UNetConfig), "mlp": (MLPDenoiser, MLPConfig), "dit": (DiT, DiTConfig), "pixelcnn": (PixelCNN, PixelCNNConfig),
                 "classifier": (Classifier, ClassifierConfig), "vae": (VAE, VAEConfig)}


def arch_of(model: nn.Module) -> str:
    """The registry name of a model's class."""
    for name, (cls, _) in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not one of this library's models ({', '.join(ARCHITECTURES)})")


# Bounds on every size field of every config, checked before a network is built (even on the meta device): a header
# asking for a million layers would otherwise cost minutes and gigabytes before its shapes could be refused. Counts
# of layers, heads and levels are what cost time on the meta device; widths cost nothing there and are bounded loosely.
# Far above anything this course trains; a tuple field's bound applies to each entry, with at most 8 entries.
WIDE = (1, 65536)
SIZE_LIMITS = {"image_channels": (1, 64), "image_size": (1, 4096), "base_channels": WIDE, "channel_mults": (1, 64),
               "num_res_blocks": (1, 64), "attention_levels": (0, 7), "cross_attention_levels": (0, 7),
               "groups": (1, 4096), "num_classes": (1, 100_000), "text_dim": WIDE, "text_layers": (0, 64),
               "text_heads": (1, 256), "data_dim": WIDE, "hidden": WIDE, "layers": (0, 256), "time_dim": (2, 65536),
               "patch_size": (1, 64), "width": WIDE, "depth": (1, 256), "heads": (1, 256), "mlp_ratio": (1, 64),
               "channels": WIDE, "num_blocks": (1, 256), "first_kernel": (1, 31), "feature_dim": WIDE,
               "latent_channels": (1, 256)}
MAX_ENTRIES = 8


def check_sizes(arch: str, values: dict) -> None:
    """Raise ValueError unless every size field in `values` is a whole number within `SIZE_LIMITS` (None where
    the config allows it: no classes, no text, the default image size)."""
    for name, value in values.items():
        low, high = SIZE_LIMITS.get(name, (None, None))
        if low is None or (value is None and name in ("num_classes", "text_dim", "image_size")):
            continue
        entries = value if isinstance(value, (list, tuple)) and len(value) <= MAX_ENTRIES else [value]
        if not all(type(v) is int and low <= v <= high for v in entries):
            limit = f"whole numbers from {low} to {high}, at most {MAX_ENTRIES}" if isinstance(value, (list, tuple)) \
                else f"a whole number from {low} to {high}"
            raise ValueError(f"{arch} config field {name} must be {limit}, got {str(value)[:40]}")


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(arch: str, values: dict):
    """Rebuild a config dataclass from its dict (lists from JSON become tuples); unknown keys are an error."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    config_cls = ARCHITECTURES[arch][1]
    if not isinstance(values, dict):
        raise ValueError(f"a {arch} config must be a JSON object of its fields, got {type(values).__name__}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no field(s) {sorted(unknown)}; valid fields: {sorted(fields)}")
    check_sizes(arch, values)
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_model(arch: str, config: dict | object | None = None) -> nn.Module:
    """Instantiate architecture `arch` from a config dataclass, a dict of its fields, or the defaults."""
    if isinstance(config, dict) or config is None:
        config = config_from_dict(arch, config or {})
    else:
        check_sizes(arch, config_to_dict(config))
    return ARCHITECTURES[arch][0](config)


def as_eps_fn(model: nn.Module, schedule: Schedule, prediction: str = "eps", labels=None, with_x0: bool = False):
    """`eps_fn(xt, t)` for samplers, from a network that predicts eps, x0 or v (`forward.to_eps`),
    or one trained with EDM's or the flow's loss (`prediction` "edm" or "flow", `continuous.as_eps_model`).

    With `labels` (B,) the model is called conditionally; use `guidance.guided_eps_fn` with
    `as_eps_model` for classifier-free guidance. `with_x0`: see `as_eps_model`.
    """
    eps_model = as_eps_model(model, schedule, prediction, with_x0)
    return lambda xt, t: eps_model(xt, t, labels)


def as_eps_model(model: nn.Module, schedule: Schedule, prediction: str = "eps", with_x0: bool = False):
    """`eps_model(xt, t, labels)` returning eps whatever the network's parametrisation.

    With `with_x0` it returns (eps, x0_hat), x0_hat computed straight from an x0 or v output
    (or EDM's D) rather than back from eps: x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) divides
    round-off by sqrt(ab), large where ab is near 0. Samplers accept either form.
    """
    if prediction in PREDICTIONS:
        if with_x0:
            return lambda xt, t, labels=None: to_eps_x0(prediction, model(xt, t, labels), xt, t, schedule)
        return lambda xt, t, labels=None: to_eps(prediction, model(xt, t, labels), xt, t, schedule)
    return continuous_eps_model(model, schedule, prediction, with_x0=with_x0)
