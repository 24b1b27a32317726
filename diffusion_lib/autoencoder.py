"""A small KL-regularised autoencoder: the latent space a latent diffusion model works in.

Stable Diffusion does not denoise pixels (Rombach et al. 2022, "High-resolution image synthesis with
latent diffusion models", Sec. 3.1): an encoder E maps an image x to a small latent z, a denoiser is
trained on z, and a decoder D maps a generated z back to pixels. E outputs a diagonal Gaussian
q(z | x) = N(mu, sigma^2), and a small KL term pulls it towards N(0, I) so that the latent space has
no holes (Kingma & Welling 2014, Eq. 10):

    loss = ||x - D(z)||^2 / pixels + kl_weight * KL(q(z | x) || N(0, I)) / latent numbers,
    z = mu + sigma * eps (the reparameterisation trick),
    KL = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2), a sum over the latent numbers (divided by their count above).

The denoiser then trains on `scale * mu` with `scale = 1 / std(z)` over the training set, so that its
latents have unit variance as the noise does (Rombach et al. 2022, Appendix G; Stable Diffusion's
0.18215 is that number for its autoencoder).

Here a 28x28 digit is padded with background to 32x32 and halved twice: z is 4 x 8 x 8 (256 numbers
for 784 pixels). The decoder crops its 32x32 output back to 28x28.

| code         | symbol / meaning                                   |
| ------------ | -------------------------------------------------- |
| `mu`, `logvar` | mean and log-variance of q(z | x), (B, C_z, h, w) |
| `z`          | a latent, (B, C_z, h, w)                           |
| `scale`      | the scale factor that gives the latents unit variance |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DOWNSAMPLING = 4  # two halvings
KL_WEIGHT = 1e-3


@dataclass(frozen=True)
class VAEConfig:
    """Everything needed to rebuild the autoencoder; stored in checkpoints."""

    image_channels: int = 1
    image_size: int = 28
    latent_channels: int = 4
    base_channels: int = 32
    groups: int = 8

    def __post_init__(self):
        if self.image_size < DOWNSAMPLING or self.image_channels not in (1, 3) or self.latent_channels < 1:
            raise ValueError(f"the autoencoder needs 1 or 3 image channels, images of at least {DOWNSAMPLING} pixels "
                             f"and at least one latent channel, got {self}")

    @property
    def padded_size(self) -> int:
        """The image size after padding to a multiple of 8 (28 -> 32), so that the latent's size is even and a
        two-level U-Net can halve it."""
        return -(-self.image_size // (2 * DOWNSAMPLING)) * 2 * DOWNSAMPLING

    @property
    def latent_size(self) -> int:
        return self.padded_size // DOWNSAMPLING


class Block(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, with a skip connection (a ResBlock without a timestep)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
                                  nn.GroupNorm(groups, out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class VAE(nn.Module):
    """E: (B, C, S, S) images in [-1, 1] -> (mu, logvar) (B, C_z, S'/4, S'/4); D: latents -> images."""

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = c = config
        ch, g = c.base_channels, c.groups
        self.encoder = nn.Sequential(
            nn.Conv2d(c.image_channels, ch, 3, padding=1), Block(ch, ch, g),
            nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), Block(2 * ch, 2 * ch, g),  # S'/2
            nn.Conv2d(2 * ch, 2 * ch, 3, stride=2, padding=1), Block(2 * ch, 2 * ch, g),  # S'/4
            nn.GroupNorm(g, 2 * ch), nn.SiLU(), nn.Conv2d(2 * ch, 2 * c.latent_channels, 3, padding=1))
        self.decoder = nn.Sequential(
            nn.Conv2d(c.latent_channels, 2 * ch, 3, padding=1), Block(2 * ch, 2 * ch, g),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * ch, 2 * ch, 3, padding=1), Block(2 * ch, ch, g),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1), Block(ch, ch, g),
            nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, c.image_channels, 3, padding=1))

    @property
    def _pad(self) -> tuple[int, int]:
        extra = self.config.padded_size - self.config.image_size
        return extra // 2, extra - extra // 2

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | x), each (B, C_z, h, w), for images (B, C, S, S) in [-1, 1]."""
        c = self.config
        if x.ndim != 4 or x.shape[1:] != (c.image_channels, c.image_size, c.image_size):
            raise ValueError(f"this autoencoder takes images of shape (B, {c.image_channels}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(x.shape)}")
        before, after = self._pad
        h = self.encoder(F.pad(x, (before, after, before, after), value=-1.0))  # background is -1
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S), unclipped, for latents (B, C_z, h, w)."""
        c = self.config
        if z.ndim != 4 or z.shape[1:] != (c.latent_channels, c.latent_size, c.latent_size):
            raise ValueError(f"this decoder takes latents of shape (B, {c.latent_channels}, {c.latent_size}, "
                             f"{c.latent_size}), got {tuple(z.shape)}")
        before, _ = self._pad
        out = self.decoder(z)
        return out[..., before:before + c.image_size, before:before + c.image_size]

    def forward(self, x: torch.Tensor, t=None, noise: torch.Tensor | None = None):
        """(reconstruction, mu, logvar); z = mu + sigma * noise (noise None: z = mu)."""
        mu, logvar = self.encode(x)
        z = mu if noise is None else mu + (0.5 * logvar).exp() * noise
        return self.decode(z), mu, logvar


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per latent number, averaged: 1/2 mean(mu^2 + sigma^2 - 1 - log sigma^2)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def vae_loss(model: VAE, x: torch.Tensor, noise: torch.Tensor, kl_weight: float = KL_WEIGHT) -> torch.Tensor:
    """Mean squared reconstruction error per pixel plus `kl_weight` times the KL per latent number."""
    recon, mu, logvar = model(x, noise=noise)
    return F.mse_loss(recon, x) + kl_weight * kl_to_standard_normal(mu, logvar)


@torch.no_grad()
def encode_images(model: VAE, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The posterior means mu (N, C_z, h, w) of images (N, C, S, S), in batches (no scaling)."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.encode(images[i:i + batch_size].to(device))[0].cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def decode_latents(model: VAE, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Images (N, C, S, S) clipped to [-1, 1] for latents z (N, C_z, h, w) (unscaled), in batches."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.decode(z[i:i + batch_size].to(device)).clamp(-1, 1).cpu()
                      for i in range(0, len(z), batch_size)])


def latent_scale(mu: torch.Tensor) -> float:
    """1 / std of the latents (all numbers pooled), so that `scale * mu` has unit variance."""
    return float(1.0 / mu.float().std())
