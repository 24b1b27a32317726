"""Latent diffusion's plumbing: the autoencoder a latent model was trained with, its scaled latents, and back.

A latent denoiser (`train --latent mnist_vae`) is an ordinary U-Net or DiT whose "images" are the
autoencoder's scaled posterior means z = scale * mu(x) (`autoencoder`). Its checkpoint records which
autoencoder and which scale, in `info["latent"]`, so that sampling can decode what it generates:

    x = D(z / scale).

| code          | meaning                                                        |
| ------------- | -------------------------------------------------------------- |
| `autoencoder` | a committed name (`mnist_vae`) or the path of a `train --arch vae` run |
| `autoencoder_sha256` | a digest of its weights (`checkpoint.weights_digest`): decoding refuses another autoencoder at the same path |
| `scale`       | 1 / std of the training latents (`autoencoder.latent_scale`)   |
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .autoencoder import VAE, decode_latents, encode_images, latent_scale
from .checkpoint import PRETRAINED_DIR, CheckpointError, load_model, weights_digest
from .data import CACHE_DATA
from .outputs import OutputError, check_writable


def autoencoder_ref(ref: str) -> str:
    """A committed autoencoder's name as it is, or any other reference as an absolute path (stored in configs)."""
    if (PRETRAINED_DIR / ref / "model.safetensors").exists():
        return ref
    path = Path(ref).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"no autoencoder {ref!r}: name a committed one (mnist_vae) or the folder of a "
                                "'python -m diffusion_lib train --arch vae' run")
    return str(path)


def autoencoder_path(ref: str) -> Path:
    """The file of the autoencoder `ref` names (`autoencoder_ref`)."""
    path = PRETRAINED_DIR / ref if "/" not in ref else Path(ref)
    return path / "model.safetensors" if path.is_dir() else path


def load_autoencoder(ref: str) -> tuple[VAE, dict]:
    """The autoencoder `ref` names (`autoencoder_ref`), on the CPU, and its info."""
    return _load_autoencoder(ref, weights_digest(autoencoder_path(ref)))


@lru_cache(maxsize=4)
def _load_autoencoder(ref: str, digest: str) -> tuple[VAE, dict]:
    """Keyed by the weights' digest too, so that an autoencoder retrained at the same path is read again."""
    model, info = load_model(autoencoder_path(ref))
    if not isinstance(model, VAE):
        raise CheckpointError(f"{ref} holds a {type(model).__name__}, not an autoencoder: train one with "
                              "'python -m diffusion_lib train --arch vae'")
    return model, info


def training_latents(ref: str, count: int | None = None) -> tuple[torch.Tensor, float]:
    """(scaled latents (N, C_z, h, w) of the autoencoder's training images, in their order; the scale).

    Encoding 60,000 digits takes a minute or two on a laptop CPU, so the result is kept in
    `~/.cache/diffusion_course/latents/`, named by a digest of the autoencoder's weights and data (not for a
    folder of images, which may change). A cached file is used only if it passes `_valid_cache` (and holds
    `count` rows, when the caller knows the number of images); otherwise the latents are encoded again.
    """
    return _training_latents(ref, weights_digest(autoencoder_path(ref)), count)


@lru_cache(maxsize=2)
def _training_latents(ref: str, digest: str, count: int | None) -> tuple[torch.Tensor, float]:
    from .data import FOLDER, load_images

    vae, info = _load_autoencoder(ref, digest)
    cached = None if info["data"].startswith(FOLDER) else _cache_file(digest, info["data"])
    stored = None if cached is None else _valid_cache(cached, vae, digest, count)
    if stored is not None:
        return stored
    writable = cached is not None and _cache_writable(cached)  # before the minutes of encoding, not after
    c = vae.config
    images, _ = load_images(info["data"], True, c.image_channels, c.image_size)
    mu = encode_images(vae, images)
    scale = latent_scale(mu)
    if writable:
        _write_cache(cached, scale * mu, scale, digest)
    return scale * mu, scale


def _cache_file(digest: str, data: str) -> Path:
    return CACHE_DATA / "latents" / f"{hashlib.sha256((digest + data).encode()).hexdigest()[:20]}.safetensors"


def _valid_cache(path: Path, vae: VAE, digest: str, count: int | None) -> tuple[torch.Tensor, float] | None:
    """(latents, scale) of a cache file that is whole and right for this autoencoder; None (re-encode) if not:
    unreadable, another autoencoder's, the wrong latent shape or count, not finite, or a scale the latents
    do not have (scale * mu has unit std, so the latents' own std must be 1)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            made_by = (f.metadata() or {}).get("autoencoder")
        stored = load_file(path)
        latents, scale = stored["latents"], float(stored["scale"])
    except (OSError, SafetensorError, KeyError, ValueError, RuntimeError, TypeError):
        return None
    c = vae.config
    ok = (made_by == digest and latents.ndim == 4
          and tuple(latents.shape[1:]) == (c.latent_channels, c.latent_size, c.latent_size)
          and (count is None or len(latents) == count) and len(latents) > 1
          and bool(latents.isfinite().all()) and math.isfinite(scale) and scale > 0
          and abs(float(latents.float().std()) - 1) < 1e-3)
    return (latents, scale) if ok else None


def _cache_writable(path: Path) -> bool:
    """Whether the cache file can be written; if not, say so once and go on without keeping the latents."""
    try:
        check_writable(path.parent)
        if path.exists() and not path.is_file():
            raise OutputError(f"{path} is not a file")
    except OutputError as error:
        print(f"note: the latents are not kept for the next run ({error})", file=sys.stderr)
        return False
    return True


def _write_cache(path: Path, latents: torch.Tensor, scale: float, digest: str) -> None:
    partial = path.with_suffix(f".{os.getpid()}.partial")
    save_file({"latents": latents.contiguous(), "scale": torch.tensor(scale, dtype=torch.float64)}, partial,
              metadata={"autoencoder": digest})
    partial.replace(path)  # whole or not at all, even with two runs at once


def latent_info(ref: str) -> dict:
    """What a latent denoiser's checkpoint records: {"autoencoder": ref, "autoencoder_sha256": its weights' digest,
    "scale": scale, "data": the images'}. The digest pins the autoencoder: see `autoencoder_of`."""
    return {"autoencoder": ref, "autoencoder_sha256": weights_digest(autoencoder_path(ref)),
            "scale": training_latents(ref)[1], "data": load_autoencoder(ref)[1]["data"]}


def autoencoder_of(info: dict) -> VAE:
    """The autoencoder a latent model of checkpoint `info` was trained with, refused if it is missing or has
    changed since (its latents would then decode through another decoder, without a word)."""
    ref, pinned = info["latent"]["autoencoder"], info["latent"].get("autoencoder_sha256")
    path = autoencoder_path(ref)
    if not path.is_file():
        raise CheckpointError(f"this latent model decodes through the autoencoder {path}, which is not there (moved "
                              "or deleted?): put it back, or retrain the latent model with --latent")
    digest = weights_digest(path)
    if pinned is not None and digest != pinned:
        raise CheckpointError(f"the autoencoder {path} has other weights ({digest}) than the one this latent model "
                              f"was trained with ({pinned}): restore that autoencoder, or retrain the latent model")
    return _load_autoencoder(ref, digest)[0]


def decode(info: dict, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] for latents z that the latent model of checkpoint `info` generated: D(z / scale)."""
    return decode_latents(autoencoder_of(info), z.float().cpu() / info["latent"]["scale"]).to(z.device)


def encode(info: dict, images: torch.Tensor) -> torch.Tensor:
    """The scaled latents scale * mu(x) of images (N, C, S, S) in [-1, 1], for the latent model of `info`."""
    return (info["latent"]["scale"] * encode_images(autoencoder_of(info), images.float().cpu())).to(images.device)


def pixel_shape(info: dict) -> tuple[int, int, int]:
    """(channels, height, width) of the images a latent model's decoder makes."""
    c = autoencoder_of(info).config
    return c.image_channels, c.image_size, c.image_size
