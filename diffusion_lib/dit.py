"""A diffusion transformer (DiT) and its text form with joint attention (MMDiT), sized for a laptop CPU.

DiT (Peebles & Xie 2023, "Scalable diffusion models with transformers", Sec. 3.2) replaces the U-Net:

    x (B, C, H, W) --patchify (p x p patches, linear)--> tokens (B, N, D) + positions
      --> [block] x depth --> adaLN, linear --> unpatchify --> (B, C, H, W)

Each block is pre-norm self-attention and an MLP whose LayerNorms are modulated by the condition
vector c (timestep embedding, plus label or pooled caption): "adaLN-Zero",

    h = h + gate_1(c) * Attention(LN(h) * (1 + scale_1(c)) + shift_1(c))
    h = h + gate_2(c) * MLP(LN(h) * (1 + scale_2(c)) + shift_2(c)),

with the linear layer that makes shift, scale and gate initialised to zero, so that every block starts
as the identity (DiT Sec. 3.2, "adaLN-Zero block").

The text form is Stable Diffusion 3's MMDiT (Esser et al. 2024, "Scaling rectified flow transformers",
Sec. 4, Fig. 2): the caption's token vectors (`text.TextEncoder`) form a second stream of tokens with
weights of its own (its own adaLN, QKV, output and MLP), and one attention runs over the concatenation
[image tokens; caption tokens] in both directions. No cross-attention: image positions attend to words
and words to image positions in the same softmax. The pooled caption also joins c, as in SD3.

| code       | symbol / meaning                                               |
| ---------- | -------------------------------------------------------------- |
| `p`        | patch size; N = (H/p)(W/p) image tokens                        |
| `D`        | `width`, the token dimension                                   |
| `c`        | the condition vector (B, D): timestep embedding [+ label or pooled caption] |
| `ids`      | caption token ids (B, L) from `text.tokenize`                  |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .text import TextEncoder, check_caption_ids, pooled
from .unet import check_noise_labels, empty_caption_ids, timestep_embedding


@dataclass(frozen=True)
class DiTConfig:
    """Everything needed to rebuild a DiT; stored in checkpoints."""

    image_channels: int = 4
    image_size: int | None = 8  # height and width, a multiple of patch_size
    patch_size: int = 2
    width: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    num_classes: int | None = None  # None: unconditional; else labels 0..num_classes-1 plus the null class
    text_dim: int | None = None  # None: no text; else the width of the caption encoder (MMDiT blocks)
    text_layers: int = 2
    text_heads: int = 4

    def __post_init__(self):
        if self.num_classes and self.text_dim:
            raise ValueError("a DiT is conditioned on labels (num_classes) or on text (text_dim), not both")
        if self.image_size is None or self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C p p): the p x p patches in row order, each flattened channel-first."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, size: int) -> torch.Tensor:
    """(B, N, C p p) -> (B, C, H, W) with H = W = `size`: `patchify` undone."""
    B, n = len(tokens), size // p
    return tokens.reshape(B, n, n, channels, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, channels, size, size)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift, with shift and scale (B, D) broadcast over the tokens of x (B, N, D)."""
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale[:, None]) + shift[:, None]


class Stream(nn.Module):
    """One token stream's weights in a block: adaLN-Zero modulation, QKV, attention output and MLP."""

    def __init__(self, width: int, mlp_ratio: int):
        super().__init__()
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * width, width))

    def qkv_of(self, h: torch.Tensor, c: torch.Tensor, heads: int):
        """(q, k, v) each (B, heads, N, D/heads) of the modulated tokens, and the four other modulations."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)  # (B, D) each
        B, N, D = h.shape
        q, k, v = self.qkv(modulate(h, shift1, scale1)).reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        return (q, k, v), (gate1, shift2, scale2, gate2)

    def finish(self, h: torch.Tensor, attended: torch.Tensor, mods) -> torch.Tensor:
        """h + gate_1 * out(attention) then h + gate_2 * MLP(modulated h). attended (B, N, D)."""
        gate1, shift2, scale2, gate2 = mods
        h = h + gate1[:, None] * self.out(attended)
        return h + gate2[:, None] * self.mlp(modulate(h, shift2, scale2))


class Block(nn.Module):
    """A DiT block (image tokens alone) or, with `joint`, an MMDiT block over image and caption tokens."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, joint: bool):
        super().__init__()
        self.heads = heads
        self.image = Stream(width, mlp_ratio)
        self.text = Stream(width, mlp_ratio) if joint else None

    def forward(self, h: torch.Tensor, c: torch.Tensor, words: torch.Tensor | None = None, keep=None):
        """h (B, N, D) image tokens; words (B, L, D) caption tokens with `keep` (B, L) for an MMDiT block."""
        B, N, D = h.shape
        (q, k, v), mods = self.image.qkv_of(h, c, self.heads)
        if self.text is None:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads)
            return self.image.finish(h, out.transpose(1, 2).reshape(B, N, D), mods), None
        (qt, kt, vt), text_mods = self.text.qkv_of(words, c, self.heads)
        visible = torch.cat([torch.ones(B, N, dtype=torch.bool, device=h.device), keep], 1)  # (B, N + L)
        out = F.scaled_dot_product_attention(torch.cat([q, qt], 2), torch.cat([k, kt], 2), torch.cat([v, vt], 2),
                                             attn_mask=visible[:, None, None, :])  # (B, heads, N + L, D/heads)
        out = out.transpose(1, 2).reshape(B, N + words.shape[1], D)
        return self.image.finish(h, out[:, :N], mods), self.text.finish(words, out[:, N:], text_mods)


class DiT(nn.Module):
    """v_theta(x, t[, label or caption]): (B, C, H, W), (B,)[, (B,) or (B, L)] -> (B, C, H, W)."""

    def __init__(self, config: DiTConfig = DiTConfig()):
        super().__init__()
        self.config = c = config
        D, p = c.width, c.patch_size
        self.patchify = nn.Linear(c.image_channels * p * p, D)
        self.position = nn.Parameter(torch.randn(1, c.tokens, D) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.label_emb = nn.Embedding(c.num_classes + 1, D) if c.num_classes else None
        if c.text_dim:
            self.text_encoder = TextEncoder(c.text_dim, c.text_layers, c.text_heads)
            self.text_in = nn.Linear(c.text_dim, D)  # caption tokens into the joint stream
            self.text_emb = nn.Linear(c.text_dim, D)  # the pooled caption into c
        self.blocks = nn.ModuleList(Block(D, c.heads, c.mlp_ratio, joint=bool(c.text_dim)) for _ in range(c.depth))
        self.final_ada = nn.Linear(D, 2 * D)
        self.final = nn.Linear(D, c.image_channels * p * p)
        for layer in (self.final_ada, self.final):  # the network starts by predicting zero (adaLN-Zero)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def check_input(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1:] != (c.image_channels, c.image_size, c.image_size):
            raise ValueError(f"this DiT takes inputs of shape (B, {c.image_channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), one timestep per input, got {tuple(t.shape)}")
        check_noise_labels(t)
        if c.text_dim:
            check_caption_ids(x.shape[0], labels)
        elif labels is not None and (not c.num_classes or labels.shape != t.shape or int(labels.min()) < 0
                                     or int(labels.max()) > c.num_classes):
            raise ValueError(f"labels must be None for an unconditional DiT, or shape ({x.shape[0]},) with values in "
                             f"0..{c.num_classes} for a class-conditional one, got {tuple(labels.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`labels`: class labels (B,) for a class-conditional DiT, caption token ids (B, L) for an MMDiT."""
        self.check_input(x, t, labels)
        c, (B, C, H, _), p = self.config, x.shape, self.config.patch_size
        cond = self.time_mlp(timestep_embedding(t, c.width))  # (B, D)
        words = keep = None
        if self.label_emb is not None:
            labels = torch.full(t.shape, c.num_classes, dtype=torch.long, device=x.device) if labels is None else labels
            cond = cond + self.label_emb(labels)
        if c.text_dim:
            ids = empty_caption_ids(B, x.device) if labels is None else labels
            keep = ids != 0
            tokens = self.text_encoder(ids, keep)  # (B, L, text_dim)
            cond = cond + self.text_emb(pooled(tokens, keep))
            words = self.text_in(tokens)  # (B, L, D)
        h = self.patchify(patchify(x, p)) + self.position  # (B, N, D)
        for block in self.blocks:
            h, words = block(h, cond, words, keep)
        shift, scale = self.final_ada(F.silu(cond)).chunk(2, dim=1)
        return unpatchify(self.final(modulate(h, shift, scale)), p, C, H)  # (B, C, H, W)
