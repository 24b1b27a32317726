"""A small image classifier: the course's independent judge of generated digits (and clothes, and your own images).

Chapters use it to ask "is this sample recognisably a digit, and which?", and its
penultimate-layer features give a Frechet distance in a space that knows about digits
(as FID uses Inception features; Heusel et al. 2017). It is trained with the same command
as every other model: `python -m diffusion_lib train --data mnist --arch classifier`.

| code          | meaning                                                  |
| ------------- | -------------------------------------------------------- |
| `features(x)` | the 128-d penultimate activations, (B, 128)              |
| `forward(x)`  | class logits, (B, num_classes), for images in [-1, 1]    |

The same network, with other `image_channels`, `image_size` and `num_classes`, judges Fashion-MNIST
(`fashion_classifier`, trained with `--data fashion-mnist --arch classifier`) or a labelled folder of
one's own images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild the classifier; stored in checkpoints."""

    channels: int = 32
    feature_dim: int = 128
    num_classes: int | None = 10
    image_channels: int = 1
    image_size: int = 28  # a multiple of 4 (two 2x poolings)

    def __post_init__(self):
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(f"the classifier's image_size must be a multiple of 4, got {self.image_size}")


class Classifier(nn.Module):
    """(conv-conv-pool) x 2 -> 128 features -> 10 logits, for (B, C, S, S) images in [-1, 1] (default (B, 1, 28, 28))."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = c = config
        ch = c.channels
        self.body = nn.Sequential(
            nn.Conv2d(c.image_channels, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * ch, 2 * ch, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * ch * (c.image_size // 4) ** 2, c.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.config.image_channels, self.config.image_size, self.config.image_size)
        if x.ndim != 4 or x.shape[1:] != shape:
            raise ValueError(f"this classifier takes images of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        return self.body(x)  # (B, feature_dim)

    def forward(self, x: torch.Tensor, t=None, labels=None) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


def classifier_loss(model: Classifier, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the class labels."""
    return F.cross_entropy(model(x), labels)


@torch.no_grad()
def classify(model: Classifier, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class (N,), its softmax probability (N,)) for images in [-1, 1]."""
    model.eval()
    device = next(model.parameters()).device
    probs = torch.cat([model(images[i:i + batch_size].to(device)).softmax(1).cpu() for i in range(0, len(images), batch_size)])
    confidence, predicted = probs.max(1)
    return predicted, confidence
