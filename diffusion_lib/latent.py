"""Latent diffusion's plumbing: the autoencoder a latent model was trained with, its scaled latents, and back.

A latent denoiser (`train --latent mnist_vae`) is an ordinary U-Net or DiT whose "images" are the
autoencoder's scaled posterior means z = scale * mu(x) (`autoencoder`). Its checkpoint records which
autoencoder and which scale, in `info["latent"]`, so that sampling can decode what it generates:

    x = D(z / scale).

| code          | meaning                                                        |
| ------------- | -------------------------------------------------------------- |
| `autoencoder` | a committed name (`mnist_vae`) or the path of a `train --arch vae` run |
| `scale`       | 1 / std of the training latents (`autoencoder.latent_scale`)   |
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .autoencoder import VAE, decode_latents, encode_images, latent_scale
from .checkpoint import PRETRAINED_DIR, CheckpointError, load_model
from .data import CACHE_DATA


def autoencoder_ref(ref: str) -> str:
    """A committed autoencoder's name as it is, or any other reference as an absolute path (stored in configs)."""
    if (PRETRAINED_DIR / ref / "model.safetensors").exists():
        return ref
    path = Path(ref).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"no autoencoder {ref!r}: name a committed one (mnist_vae) or the folder of a "
                                "'python -m diffusion_lib train --arch vae' run")
    return str(path)


@lru_cache(maxsize=4)
def load_autoencoder(ref: str) -> tuple[VAE, dict]:
    """The autoencoder `ref` names (`autoencoder_ref`), on the CPU, and its info."""
    model, info = load_model(PRETRAINED_DIR / ref if "/" not in ref else Path(ref))
    if not isinstance(model, VAE):
        raise CheckpointError(f"{ref} holds a {type(model).__name__}, not an autoencoder: train one with "
                              "'python -m diffusion_lib train --arch vae'")
    return model, info


@lru_cache(maxsize=2)
def training_latents(ref: str) -> tuple[torch.Tensor, float]:
    """(scaled latents (N, C_z, h, w) of the autoencoder's training images, in their order; the scale).

    Encoding 60,000 digits takes a minute or two on a laptop CPU, so the result is kept in
    `~/.cache/diffusion_course/latents/`, named by a hash of the autoencoder's weights and data (not for a
    folder of images, which may change).
    """
    from .data import FOLDER, load_images

    vae, info = load_autoencoder(ref)
    cached = None if info["data"].startswith(FOLDER) else _cache_file(ref, info["data"])
    if cached is not None and cached.exists():
        stored = load_file(cached)
        return stored["latents"], float(stored["scale"])
    c = vae.config
    images, _ = load_images(info["data"], True, c.image_channels, c.image_size)
    mu = encode_images(vae, images)
    scale = latent_scale(mu)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        save_file({"latents": (scale * mu).contiguous(), "scale": torch.tensor(scale, dtype=torch.float64)}, partial)
        partial.replace(cached)  # whole or not at all, even with two runs at once
    return scale * mu, scale


def _cache_file(ref: str, data: str) -> Path:
    path = PRETRAINED_DIR / ref if "/" not in ref else Path(ref)
    path = path / "model.safetensors" if path.is_dir() else path
    digest = hashlib.sha256(path.read_bytes() + data.encode()).hexdigest()[:20]
    return CACHE_DATA / "latents" / f"{digest}.safetensors"


def latent_info(ref: str) -> dict:
    """What a latent denoiser's checkpoint records: {"autoencoder": ref, "scale": scale, "data": the images'}."""
    return {"autoencoder": ref, "scale": training_latents(ref)[1], "data": load_autoencoder(ref)[1]["data"]}


def decode(info: dict, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] for latents z that the latent model of checkpoint `info` generated: D(z / scale)."""
    vae, _ = load_autoencoder(info["latent"]["autoencoder"])
    return decode_latents(vae, z.float().cpu() / info["latent"]["scale"]).to(z.device)


def encode(info: dict, images: torch.Tensor) -> torch.Tensor:
    """The scaled latents scale * mu(x) of images (N, C, S, S) in [-1, 1], for the latent model of `info`."""
    vae, _ = load_autoencoder(info["latent"]["autoencoder"])
    return (info["latent"]["scale"] * encode_images(vae, images.float().cpu())).to(images.device)


def pixel_shape(info: dict) -> tuple[int, int, int]:
    """(channels, height, width) of the images a latent model's decoder makes."""
    c = load_autoencoder(info["latent"]["autoencoder"])[0].config
    return c.image_channels, c.image_size, c.image_size
