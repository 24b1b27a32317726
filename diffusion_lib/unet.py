"""A small U-Net denoising network for images (28x28 gray by default, any size and 1 or 3 channels), sized for a laptop CPU.

Architecture (DDPM Appendix B, shrunk; Ronneberger et al. 2015 for the U shape):

    x (B, C, H, W) --conv--> [ResBlock x n, Downsample] per level --> middle (ResBlock, Attention, ResBlock)
      --> [ResBlock x (n+1) on concat(skip), Upsample] per level --> GroupNorm, SiLU, conv --> (B, C, H, W)

Every ResBlock adds a projection of the timestep embedding (sinusoidal, as in
"Attention is all you need" Sec. 3.5, then an MLP) and, for a class-conditional model,
a learned label embedding. Label `num_classes` is the null class used for classifier-free
guidance (Ho & Salimans 2022). Code timestep `t` in 0..T-1 is the paper's t+1.

A text-conditional U-Net (`text_dim` set) takes caption token ids (B, L) instead of labels:
a `text.TextEncoder` turns them into token vectors, every block at `cross_attention_levels`
(and the middle) gets a `text.CrossAttention` from image positions to those tokens (Rombach
et al. 2022, Sec. 3.3), and the mean of the caption's token vectors joins the timestep
embedding as a summary of the whole caption (as Imagen's pooled text embedding, Saharia et
al. 2022, Sec. 2.4). The empty caption (<start> alone) is the null condition for guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .text import CrossAttention, TextEncoder, check_caption_ids, pooled


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a U-Net; stored in checkpoints."""

    image_channels: int = 1
    image_size: int | None = None  # the height and width it generates, a multiple of 2^(levels - 1); None: 28,
    # as for checkpoints written before the field existed (the network itself takes any size its levels divide)
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)  # indices into channel_mults; 2 = 7x7 at 28x28
    groups: int = 8
    num_classes: int | None = None  # None: unconditional; else labels 0..num_classes-1 plus null
    text_dim: int | None = None  # None: no text; else the width of the caption's token vectors
    text_layers: int = 2
    text_heads: int = 4
    cross_attention_levels: tuple[int, ...] = (1, 2)  # levels whose blocks attend to the caption
    interval: bool = False  # told an interval of times, not one noise label (MeanFlow): `denoisers.meanflow_times`

    def __post_init__(self):
        if self.num_classes and self.text_dim:
            raise ValueError("a U-Net is conditioned on labels (num_classes) or on text (text_dim), not both")
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size is not None and (self.image_size < factor or self.image_size % factor):
            raise ValueError(f"image_size {self.image_size} is not a multiple of {factor}, as a U-Net of "
                             f"{len(self.channel_mults)} levels needs: choose for example {factor * 7} or {factor * 8}")
        if self.image_channels < 1:  # 1 gray, 3 RGB, or an autoencoder's latent channels (`autoencoder`)
            raise ValueError(f"image_channels must be at least 1, got {self.image_channels}")

    @property
    def time_dim(self) -> int:
        return 4 * self.base_channels


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: (B,) -> (B, dim). Vaswani et al. 2017, Sec. 3.5."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def check_time_input(t: torch.Tensor, batch: int, interval: bool, item: str) -> None:
    """Refuse a time input of the wrong shape: (B,) noise labels, or for an interval network (B, 2) pairs."""
    shape = (batch, 2) if interval else (batch,)
    if tuple(t.shape) != shape:
        what = (f"a time and an interval length per {item} (`denoisers.meanflow_times`)" if interval
                else f"one timestep per {item}")
        raise ValueError(f"t must have shape {shape}, {what}, got {tuple(t.shape)}")
    check_noise_labels(t)


MAX_NOISE_LABEL = 4000  # DDPM steps 0..T-1 (T <= 1000 here), flow's 1000 s in [0, 1000], EDM's 250 ln(sigma)


def check_noise_labels(t: torch.Tensor) -> None:
    """Refuse timesteps (noise labels) a trained network never sees: not finite, or beyond +-MAX_NOISE_LABEL.

    DDPM models get integer steps 0..T-1; EDM's labels 1000 c_noise = 250 ln(sigma) are negative below sigma = 1
    (about -1550 at sigma = 0.002, +2480 at the largest sigma of a 1000-step cosine schedule). Which exact range a
    model was trained on is the sampler's business (`Schedule.check_timesteps`); this catches the absurd.
    """
    if t.is_floating_point() and not bool(t.isfinite().all()):
        raise ValueError("timesteps must be finite, got NaN or infinity")
    if t.numel() and float(t.abs().max()) > MAX_NOISE_LABEL:
        raise ValueError(f"timestep {float(t.abs().max()):g} is out of range: networks here take DDPM steps 0..T-1 "
                         f"or continuous noise labels within +-{MAX_NOISE_LABEL}")


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the conditioning embedding, twice; with a skip connection."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # (B, HW, C) each
        h = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.out(h.transpose(1, 2).reshape(B, C, H, W))


class UNet(nn.Module):
    """F(x, noise label[, condition]): (B, C, H, W), (B,)[, (B,) or (B, L)] -> (B, C, H, W).

    What it outputs (eps, x0 or v on DDPM's steps, EDM's F, or the flow's velocity) is its checkpoint's
    `prediction`; `denoisers` turns it into x0_hat and eps_hat. The noise label is DDPM's step t, or 1000 c_noise
    (EDM) or 1000 s (flow) (`continuous`)."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = c = config
        chans = [c.base_channels * m for m in c.channel_mults]
        self.time_mlp = nn.Sequential(nn.Linear(c.base_channels, c.time_dim), nn.SiLU(), nn.Linear(c.time_dim, c.time_dim))
        self.interval_mlp = nn.Sequential(nn.Linear(c.base_channels, c.time_dim), nn.SiLU(),
                                          nn.Linear(c.time_dim, c.time_dim)) if c.interval else None
        self.label_emb = nn.Embedding(c.num_classes + 1, c.time_dim) if c.num_classes else None
        if c.text_dim:
            self.text_encoder = TextEncoder(c.text_dim, c.text_layers, c.text_heads)
            self.text_emb = nn.Linear(c.text_dim, c.time_dim)
        self.stem = nn.Conv2d(c.image_channels, chans[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_chans, ch = [chans[0]], chans[0]
        for level, out_ch in enumerate(chans):
            for _ in range(c.num_res_blocks):
                self.down.append(self._block(ch, out_ch, level))
                ch = out_ch
                skip_chans.append(ch)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chans.append(ch)

        self.mid1 = ResBlock(ch, ch, c.time_dim, c.groups)
        self.mid_attn = Attention(ch, c.groups)
        self.mid_cross = CrossAttention(ch, c.text_dim, c.groups) if c.text_dim else None
        self.mid2 = ResBlock(ch, ch, c.time_dim, c.groups)

        self.up = nn.ModuleList()
        for level, out_ch in reversed(list(enumerate(chans))):
            for _ in range(c.num_res_blocks + 1):
                self.up.append(self._block(ch + skip_chans.pop(), out_ch, level))
                ch = out_ch
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))

        self.head = nn.Sequential(nn.GroupNorm(c.groups, ch), nn.SiLU(), nn.Conv2d(ch, c.image_channels, 3, padding=1))

    def _block(self, in_ch: int, out_ch: int, level: int) -> nn.Module:
        c = self.config
        layers = [ResBlock(in_ch, out_ch, c.time_dim, c.groups)]
        if level in c.attention_levels:
            layers.append(Attention(out_ch, c.groups))
        if c.text_dim and level in c.cross_attention_levels:
            layers.append(CrossAttention(out_ch, c.text_dim, c.groups))
        return nn.ModuleList(layers)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.channel_mults) - 1)

    def check_input(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.image_channels:
            raise ValueError(f"expected images of shape (B, {c.image_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.downsampling or x.shape[3] % self.downsampling:
            raise ValueError(
                f"image height and width must be multiples of {self.downsampling} for this U-Net "
                f"({len(c.channel_mults)} levels), got {x.shape[2]}x{x.shape[3]}; pad or resize the images"
            )
        check_time_input(t, x.shape[0], c.interval, "image")
        if c.text_dim:
            check_caption_ids(x.shape[0], labels)
        elif labels is not None and not c.num_classes:
            raise ValueError("this U-Net is unconditional (num_classes=None): pass labels=None")
        elif labels is not None and (labels.shape != (x.shape[0],) or int(labels.min()) < 0
                                     or int(labels.max()) > c.num_classes):
            raise ValueError(
                f"labels must have shape ({x.shape[0]},) with values in 0..{c.num_classes - 1} "
                f"(or {c.num_classes} for the null class), got shape {tuple(labels.shape)}"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`labels`: class labels (B,) for a class-conditional U-Net, caption token ids (B, L) for a text one."""
        self.check_input(x, t, labels)
        c = self.config
        if c.interval:  # (s, s - r): the two embeddings add (`denoisers.meanflow_times`)
            emb = self.time_mlp(timestep_embedding(t[:, 0], c.base_channels)) + \
                self.interval_mlp(timestep_embedding(t[:, 1], c.base_channels))
        else:
            emb = self.time_mlp(timestep_embedding(t, c.base_channels))  # (B, time_dim)
        text = None
        if self.label_emb is not None:
            if labels is None:
                # no label given: the null class (long even where t is a float noise label, as for flow and edm)
                labels = torch.full((len(x),), self.config.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.label_emb(labels)
        if self.config.text_dim:
            text = self.encode_text(labels if labels is not None else empty_caption_ids(len(x), x.device))
            tokens, keep = text
            emb = emb + self.text_emb(pooled(tokens, keep))  # (B, time_dim)
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb, text)
            skips.append(h)
        h = self.mid_attn(self.mid1(h, emb))
        if self.mid_cross is not None:
            h = self.mid_cross(h, *text)
        h = self.mid2(h, emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb, text)
        return self.head(h)

    def encode_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token vectors tau(y) (B, L, text_dim), keep mask (B, L)) of caption ids (B, L)."""
        keep = ids != 0
        return self.text_encoder(ids, keep), keep

    @staticmethod
    def _run(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, text) -> torch.Tensor:
        if not isinstance(layer, nn.ModuleList):
            return layer(h)  # down- or upsampling
        h = layer[0](h, emb)
        for module in layer[1:]:
            h = module(h, *text) if isinstance(module, CrossAttention) else module(h)
        return h


def empty_caption_ids(batch: int, device=None) -> torch.Tensor:
    """Token ids (B, 1) of the empty caption, <start> alone: the null condition of a text U-Net."""
    return torch.ones(batch, 1, dtype=torch.long, device=device)
