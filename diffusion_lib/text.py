"""Words as a condition: captions measured from MNIST, a tiny text encoder, and cross-attention.

The large text-to-image systems encode the prompt with a transformer and let the image network
attend to the resulting token vectors (Rombach et al. 2022, "Latent diffusion", Sec. 3.3):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,  Q = W_Q phi(x_t),  K = W_K tau(y),  V = W_V tau(y)

with queries from the image positions phi(x_t) and keys and values from the caption's tokens
tau(y). This module holds those pieces at MNIST scale.

| code            | symbol / meaning                                               |
| --------------- | -------------------------------------------------------------- |
| `ids`           | token ids (B, L): 1 = <start> first, then the words, 0 = padding |
| `keep`          | (B, L) bool, True for real tokens (<start> included), False for padding |
| `tokens`        | tau(y), the encoder's output (B, L, D)                         |
| `h`             | phi(x_t), image features (B, C, H, W)                          |
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTE_WORDS = {"thickness": ("thin", "thick"), "slant": ("upright", "slanted"), "size": ("small", "large")}
FILLER_WORDS = ("a", "an", "digit", "written", "drawn", "and")
VOCABULARY = ("<pad>", "<start>", *DIGIT_WORDS, *(w for pair in ATTRIBUTE_WORDS.values() for w in pair), *FILLER_WORDS)
MAX_TOKENS = 8  # <start> and up to 7 words


# ---------------------------------------------------------------------------------------------- captions


def measure_attributes(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stroke thickness, slant and size of digits (N, 1, H, W) in [-1, 1], each a float (N,).

    thickness: ink (pixels > 0) per row that holds ink, a width in pixels; slant: the slope dx/dy of
    the ink's principal axis (positive leans right); size: height of the ink's bounding box, in pixels.
    """
    ink = (images[:, 0] > 0).float()  # (N, H, W)
    N, H, W = ink.shape
    rows = ink.sum(2)  # (N, H)
    thickness = rows.sum(1) / (rows > 0).sum(1).clamp(min=1)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    mass = ink.sum((1, 2)).clamp(min=1)
    my, mx = (ink * ys).sum((1, 2)) / mass, (ink * xs).sum((1, 2)) / mass
    cov_xy = (ink * (xs - mx[:, None, None]) * (ys - my[:, None, None])).sum((1, 2)) / mass
    var_y = (ink * (ys - my[:, None, None]) ** 2).sum((1, 2)) / mass
    slant = -cov_xy / var_y.clamp(min=1e-6)  # image rows grow downwards: a right lean has negative covariance
    filled = rows > 0
    top = filled.float().argmax(1)
    bottom = H - 1 - filled.flip(1).float().argmax(1)
    size = (bottom - top + 1).float() * filled.any(1)
    return {"thickness": thickness, "slant": slant, "size": size}


def attribute_words(attributes: dict[str, torch.Tensor], thresholds: dict[str, float]) -> list[dict[str, str]]:
    """Per image, the word for each attribute: the second word of ATTRIBUTE_WORDS above its threshold."""
    n = len(next(iter(attributes.values())))
    return [{name: ATTRIBUTE_WORDS[name][int(attributes[name][i] > thresholds[name])] for name in ATTRIBUTE_WORDS}
            for i in range(n)]


def caption(label: int, words: dict[str, str], phrasing: int = 0, attributes=("thickness", "slant", "size")) -> str:
    """A caption such as "a thick slanted seven" or "seven written small and thin" (three phrasings)."""
    if not 0 <= label <= 9:
        raise ValueError(f"label must be a digit 0..9, got {label}")
    adjectives = [words[name] for name in attributes]
    digit = DIGIT_WORDS[label]
    if phrasing % 3 == 0:
        return " ".join(["a", *adjectives, digit])
    if phrasing % 3 == 1:
        return " ".join([digit, "written", *(" and ".join(adjectives).split())]) if adjectives else digit
    return " ".join(["a", *adjectives, "digit", digit])


# ---------------------------------------------------------------------------------------------- tokens


def tokenize(captions: list[str], max_tokens: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids (B, max_tokens): <start>, the words, then 0s; and the mask of real tokens (B, max_tokens).

    Every caption begins with <start>, so even the empty caption (the null condition for
    classifier-free guidance) has one token to attend to, as CLIP's begin-of-text token does.
    """
    index = {word: i for i, word in enumerate(VOCABULARY)}
    ids = torch.zeros(len(captions), max_tokens, dtype=torch.long)
    for row, text in enumerate(captions):
        words = text.lower().split()
        unknown = [w for w in words if w not in index or w.startswith("<")]
        if unknown:
            raise ValueError(f"unknown word(s) {unknown} in {text!r}; the vocabulary is: {' '.join(VOCABULARY[2:])}")
        if len(words) + 1 > max_tokens:
            raise ValueError(f"{text!r} has {len(words)} words; at most {max_tokens - 1} fit")
        ids[row, : len(words) + 1] = torch.tensor([index["<start>"]] + [index[w] for w in words], dtype=torch.long)
    return ids, ids != 0


class TextEncoder(nn.Module):
    """tau(y): word embeddings plus learned positions through a small transformer encoder. (B, L) -> (B, L, D)."""

    def __init__(self, dim: int = 64, layers: int = 2, heads: int = 4, max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.embed = nn.Embedding(len(VOCABULARY), dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if ids.shape != keep.shape or ids.ndim != 2 or ids.shape[1] > len(self.position):
            raise ValueError(f"ids and keep must both be (B, L<={len(self.position)}), got {tuple(ids.shape)} "
                             f"and {tuple(keep.shape)}")
        if not bool(keep[:, 0].all()):
            raise ValueError("every caption needs its <start> token at position 0: make ids with tokenize()")
        x = self.embed(ids) + self.position[: ids.shape[1]]  # (B, L, D)
        return self.norm(self.encoder(x, src_key_padding_mask=~keep))


class CrossAttention(nn.Module):
    """Image positions attend to caption tokens, with a residual: h + W_O softmax(Q K^T / sqrt(d)) V.

    h (B, C, H, W) gives the queries, tokens (B, L, D) the keys and values; `keep` (B, L) hides the
    padding (each caption keeps at least its <start> token, see `tokenize`).
    """

    def __init__(self, ch: int, token_dim: int, groups: int, heads: int = 1):
        super().__init__()
        if ch % heads:
            raise ValueError(f"channels {ch} must be divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(token_dim, 2 * ch)
        self.out = nn.Conv2d(ch, ch, 1)

    def weights(self, h: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor):
        """(queries, values, attention weights (B, heads, HW, L)): where each image position looks."""
        B, C, H, W = h.shape
        if tokens.shape[:2] != keep.shape or len(tokens) != B:
            raise ValueError(f"tokens (B, L, D) and keep (B, L) must match the batch of {B} images, "
                             f"got {tuple(tokens.shape)} and {tuple(keep.shape)}")
        d = C // self.heads
        q = self.q(self.norm(h)).reshape(B, self.heads, d, H * W).transpose(2, 3)  # (B, heads, HW, d)
        k, v = self.kv(tokens).reshape(B, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, L, d) each
        scores = q @ k.transpose(2, 3) / math.sqrt(d)  # (B, heads, HW, L)
        if not bool(keep.any(1).all()):
            raise ValueError("each caption needs at least one real token (its <start>): make them with tokenize()")
        attention = F.softmax(scores.masked_fill(~keep[:, None, None, :], float("-inf")), dim=-1)
        return attention, v

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        attention, v = self.weights(h, tokens, keep)
        out = (attention @ v).transpose(2, 3).reshape(B, C, H, W)  # (B, C, H, W)
        return h + self.out(out)
