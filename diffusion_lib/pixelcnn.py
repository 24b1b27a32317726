"""PixelCNN: an autoregressive image model that generates one pixel at a time (van den Oord et al. 2016).

p(x) = prod_i p(x_i | x_1, ..., x_{i-1}), pixels in raster order (row by row, left to right).
Masked convolutions make the logit at pixel i see only pixels before i: mask "A" (first layer)
also hides pixel i itself, mask "B" (later layers) lets a layer see its own position, which
by then holds only information from before i. Here each pixel is binary (MNIST thresholded
at mid-grey), so p(x_i | x_<i) is a Bernoulli whose logit the network outputs.

| code        | symbol                          |
| ----------- | ------------------------------- |
| `x`         | x in {0, 1}^(H x W)             |
| `logits[i]` | log-odds of p(x_i = 1 | x_<i)   |

Sampling costs one network call per pixel: H * W calls (784 at 28x28).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PixelCNNConfig:
    """Everything needed to rebuild a PixelCNN; stored in checkpoints."""

    channels: int = 32
    num_blocks: int = 5
    first_kernel: int = 7
    num_classes: int | None = None  # accepted for a uniform interface; this PixelCNN is unconditional


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is zero at and after the centre ("A") or after it ("B")."""

    def __init__(self, mask_type: str, in_ch: int, out_ch: int, kernel_size: int):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        k = kernel_size // 2
        mask = torch.ones(kernel_size, kernel_size)
        mask[k, k + (mask_type == "B"):] = 0  # the centre row, from the centre (A) or after it (B)
        mask[k + 1:, :] = 0  # every row below the centre
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    """logits = PixelCNN(x): (B, 1, H, W) in {0, 1} -> (B, 1, H, W) Bernoulli logits, pixel i from x_<i."""

    def __init__(self, config: PixelCNNConfig = PixelCNNConfig()):
        super().__init__()
        self.config = c = config
        if c.num_classes:
            raise ValueError("this PixelCNN is unconditional: use num_classes=None")
        self.first = MaskedConv2d("A", 1, c.channels, c.first_kernel)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), MaskedConv2d("B", c.channels, c.channels, 3), nn.ReLU(), nn.Conv2d(c.channels, c.channels, 1))
            for _ in range(c.num_blocks)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c.channels, c.channels, 1), nn.ReLU(), nn.Conv2d(c.channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected binary images of shape (B, 1, H, W), got {tuple(x.shape)}")
        h = self.first(x * 2.0 - 1.0)  # centre {0, 1} on {-1, 1}
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def binarize(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> {0., 1.}, thresholded at mid-grey (0)."""
    return (images > 0).float()


def pixelcnn_loss(model: PixelCNN, x: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood in nats per pixel: mean binary cross-entropy of the logits."""
    return F.binary_cross_entropy_with_logits(model(x), x)


@torch.no_grad()
def pixelcnn_sample(model: PixelCNN, n: int, height: int = 28, width: int = 28, generator=None,
                    snapshot_every: int = 0):
    """Sample n images pixel by pixel in raster order: one network call per pixel.

    Each call sees only the rows up to the current one: by the masks, pixels below it cannot
    change its logit, so this halves the work on average without changing any probability.

    Returns (images (n, 1, H, W) in {0, 1}, snapshots), where `snapshots` holds the canvas
    after every `snapshot_every` pixels (empty when 0), for showing the image fill in.
    """
    device = next(model.parameters()).device
    x = torch.zeros(n, 1, height, width, device=device)
    snapshots = []
    for i in range(height * width):
        row, col = divmod(i, width)
        probs = torch.sigmoid(model(x[:, :, :row + 1])[:, 0, row, col])  # (n,); rows below cannot matter
        x[:, 0, row, col] = torch.bernoulli(probs, generator=generator)
        if snapshot_every and (i + 1) % snapshot_every == 0:
            snapshots.append(x.clone())
    return x, snapshots
