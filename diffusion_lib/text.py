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
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTE_WORDS = {"thickness": ("thin", "thick"), "slant": ("upright", "slanted"), "width": ("narrow", "wide")}
FILLER_WORDS = ("a", "an", "digit", "written", "drawn", "and")
VOCABULARY = ("<pad>", "<start>", *DIGIT_WORDS, *(w for pair in ATTRIBUTE_WORDS.values() for w in pair), *FILLER_WORDS)
MAX_TOKENS = 8  # <start> and up to 7 words
# One (thickness, slant) pair per digit that never appears together in a training caption, so that
# a trained model can be asked for combinations it has never been shown (the four pairs in turn).
HELD_OUT = {d: (("thin", "upright"), ("thin", "slanted"), ("thick", "upright"), ("thick", "slanted"))[d % 4]
            for d in range(10)}


# ---------------------------------------------------------------------------------------------- captions


def measure_attributes(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stroke thickness, slant and width of digits (N, 1, H, W) in [-1, 1], each a float (N,).

    thickness: ink (pixels > 0) per row that holds ink, a width in pixels; slant: the slope dx/dy of
    the ink's principal axis (positive leans right); width: of the ink's bounding box, in pixels.
    (MNIST scales every digit to the same height, so width, not height, is what varies.)
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
    filled = ink.sum(1) > 0  # (N, W): columns that hold ink
    left = filled.float().argmax(1)
    right = W - 1 - filled.flip(1).float().argmax(1)
    width = (right - left + 1).float() * filled.any(1)
    return {"thickness": thickness, "slant": slant, "width": width}


def attribute_thresholds(attributes: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, list[list[float]]]:
    """Per attribute and digit, the lower tercile, median and upper tercile: {name: 10 x [low, median, high]}.

    Thresholds are per digit because a "wide one" is narrower than a "narrow zero".
    """
    q = torch.tensor([1 / 3, 1 / 2, 2 / 3])
    return {name: [torch.quantile(values[labels == d], q).tolist() for d in range(10)] for name, values in attributes.items()}


def attribute_codes(attributes: dict[str, torch.Tensor], labels: torch.Tensor, thresholds: dict) -> torch.Tensor:
    """(N, 3) per image and attribute: 0 = first word (below the lower tercile), 1 = second word (above
    the upper tercile), -1 = in between, so no word is said."""
    codes = []
    for name in ATTRIBUTE_WORDS:
        low_high = torch.tensor(thresholds[name])[labels]  # (N, 3)
        values = attributes[name]
        codes.append(torch.where(values < low_high[:, 0], 0, torch.where(values > low_high[:, 2], 1, -1)))
    return torch.stack(codes, 1)


@lru_cache(maxsize=1)
def mnist_caption_data() -> tuple[torch.Tensor, dict]:
    """The attribute codes (60000, 3) of the MNIST training digits, and the thresholds they came from."""
    from .data import load_mnist

    images, labels = load_mnist(train=True)
    attributes = measure_attributes(images)
    thresholds = attribute_thresholds(attributes, labels)
    return attribute_codes(attributes, labels, thresholds), thresholds


def caption(label: int, words: dict[str, str], phrasing: int = 0, attributes=tuple(ATTRIBUTE_WORDS)) -> str:
    """A caption such as "a thick slanted seven" or "seven written wide and thin" (three phrasings)."""
    if not 0 <= label <= 9:
        raise ValueError(f"label must be a digit 0..9, got {label}")
    adjectives = [words[name] for name in attributes if name in words]
    digit = DIGIT_WORDS[label]
    if phrasing % 3 == 1:
        return " ".join([digit, "written", *(" and ".join(adjectives).split())]) if adjectives else digit
    rest = [*adjectives, digit] if phrasing % 3 == 0 else [*adjectives, "digit", digit]
    return " ".join(["an" if rest[0][0] in "aeiou" else "a", *rest])


def training_captions(labels: torch.Tensor, codes: torch.Tensor, generator: torch.Generator,
                      say_word: float = 0.8) -> list[str]:
    """Random captions for a batch: each clear attribute said with chance `say_word`, in a random order
    and phrasing, never both words of the digit's HELD_OUT pair (one of them is then left out)."""
    n = len(labels)
    say = torch.rand(n, len(ATTRIBUTE_WORDS), generator=generator) < say_word
    order = torch.rand(n, len(ATTRIBUTE_WORDS), generator=generator).argsort(1)
    phrasing = torch.randint(0, 3, (n,), generator=generator)
    drop_first = torch.rand(n, generator=generator) < 0.5
    names = list(ATTRIBUTE_WORDS)
    captions = []
    for i in range(n):
        digit = int(labels[i])
        words = {name: ATTRIBUTE_WORDS[name][int(codes[i, j])] for j, name in enumerate(names)
                 if codes[i, j] >= 0 and say[i, j]}
        if (words.get("thickness"), words.get("slant")) == HELD_OUT[digit]:
            del words["thickness" if drop_first[i] else "slant"]
        captions.append(caption(digit, words, int(phrasing[i]), [names[j] for j in order[i].tolist()]))
    return captions


def parse_caption(text: str) -> tuple[int | None, dict[str, str]]:
    """The digit (None if the caption names none) and the attribute words a caption asks for."""
    words = text.lower().split()
    digits = [DIGIT_WORDS.index(w) for w in words if w in DIGIT_WORDS]
    asked = {name: w for name, pair in ATTRIBUTE_WORDS.items() for w in words if w in pair}
    return (digits[0] if digits else None), asked


def attribute_agreement(images: torch.Tensor, labels: torch.Tensor, asked: list[dict[str, str]],
                        thresholds: dict) -> dict[str, float]:
    """Per attribute, the fraction of images that lie on the asked word's side of their digit's median.

    `asked[i]` holds the words image i was asked for (`parse_caption`); chance is 0.5.
    """
    measured = measure_attributes(images)
    result = {}
    for name, pair in ATTRIBUTE_WORDS.items():
        rows = [i for i, words in enumerate(asked) if name in words]
        if rows:
            medians = torch.tensor(thresholds[name])[labels[rows], 1]
            above = measured[name][rows] > medians
            wanted = torch.tensor([asked[i][name] == pair[1] for i in rows])
            result[name] = (above == wanted).float().mean().item()
    return result


# ---------------------------------------------------------------------------------------------- tokens


def _short(text: str, limit: int = 60) -> str:
    """A caption quoted for an error message, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


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
            raise ValueError(f"unknown word(s) {unknown[:5]} in {_short(text)}; the vocabulary is: {' '.join(VOCABULARY[2:])}")
        if len(words) + 1 > max_tokens:
            raise ValueError(f"{_short(text)} has {len(words)} words; at most {max_tokens - 1} fit")
        ids[row, : len(words) + 1] = torch.tensor([index["<start>"]] + [index[w] for w in words], dtype=torch.long)
    return ids, ids != 0


def check_caption_ids(batch: int, ids: torch.Tensor | None) -> None:
    """Refuse anything but `tokenize`'s ids (B, L) for a batch of `batch` (None, the empty caption, passes)."""
    if ids is None:
        return
    if ids.ndim != 2 or len(ids) != batch or ids.dtype != torch.long:
        raise ValueError(f"this network reads captions: pass token ids (B={batch}, L) from text.tokenize, "
                         f"got {tuple(ids.shape)} {ids.dtype}")
    if int(ids.min()) < 0 or int(ids.max()) >= len(VOCABULARY) or not bool((ids[:, 0] == 1).all()):
        raise ValueError("token ids must come from text.tokenize (<start> = 1 first, words, 0 = padding)")


def pooled(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The mean of a caption's real token vectors: (B, L, D), (B, L) -> (B, D)."""
    return (tokens * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)


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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor):
    """softmax(Q K^T / sqrt(d)) V over the tokens `keep` marks. Vaswani et al. 2017, Eq. 1.

    q (..., N, d) queries, k and v (..., L, d) keys and values, keep (..., L) broadcasting to them
    (True = a real token). Returns (output (..., N, d), weights (..., N, L), each row summing to 1).
    """
    if not bool(keep.any(-1).all()):
        raise ValueError("each caption needs at least one real token (its <start>): make them with tokenize()")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., N, L)
    weights = F.softmax(scores.masked_fill(~keep[..., None, :], float("-inf")), dim=-1)
    return weights @ v, weights


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
        """(attention weights (B, heads, HW, L), output (B, heads, HW, d)): where each image position looks."""
        B, C, H, W = h.shape
        if tokens.shape[:2] != keep.shape or len(tokens) != B:
            raise ValueError(f"tokens (B, L, D) and keep (B, L) must match the batch of {B} images, "
                             f"got {tuple(tokens.shape)} and {tuple(keep.shape)}")
        d = C // self.heads
        q = self.q(self.norm(h)).reshape(B, self.heads, d, H * W).transpose(2, 3)  # (B, heads, HW, d)
        k, v = self.kv(tokens).reshape(B, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, L, d) each
        out, attention = attend(q, k, v, keep[:, None, :])
        return attention, out

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        _, out = self.weights(h, tokens, keep)
        return h + self.out(out.transpose(2, 3).reshape(B, C, H, W))  # (B, C, H, W)
