"""Data: MNIST as tensors in [-1, 1], and 2-D toy distributions generated in code.

MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0) is read with `torchvision.datasets.MNIST`
from the repository's `data/` folder, where the four original files are committed in
torchvision's layout (`data/MNIST/raw/*.gz`). Where that folder is absent (a pip install
on Colab) the files are downloaded into `~/.cache/diffusion_course`. The environment
variable `DIFFUSION_COURSE_DATA` names another folder to read from.
"""

from __future__ import annotations

import hashlib
import math
import os
from functools import lru_cache
from pathlib import Path

import torch

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
CACHE_DATA = Path.home() / ".cache" / "diffusion_course"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TOY_DATASETS = ("moons", "swissroll", "gaussians", "checkerboard")
DATASETS = ("mnist",) + TOY_DATASETS


def mnist_root() -> tuple[Path, bool]:
    """The folder to read MNIST from, and whether downloading into it from the internet is allowed."""
    if os.environ.get("DIFFUSION_COURSE_DATA"):
        return Path(os.environ["DIFFUSION_COURSE_DATA"]), False
    if (REPO_DATA / "MNIST" / "raw").is_dir():
        return REPO_DATA, False
    return CACHE_DATA, True


def load_mnist(train: bool = True, root: str | Path | None = None, download: bool | None = None):
    """MNIST as (images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64).

    With no `root`, uses `mnist_root()`. Where the original .gz files are present, torchvision
    verifies their md5s and extracts them without any network access. Raises FileNotFoundError
    saying where to put the files when they are missing and cannot be downloaded.
    """
    default_root, default_download = mnist_root()
    root = Path(root) if root is not None else default_root
    if download is None:
        download = default_download or all((root / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES)
    return _load_mnist(train, str(root), download)


def _check_md5s(raw: Path) -> None:
    """Raise a clear error for an MNIST file that is present but not the original (torchvision would try to download it)."""
    from torchvision.datasets import MNIST

    for name, md5 in MNIST.resources:
        path = raw / name
        if path.is_file():
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest != md5:
                raise FileNotFoundError(f"{path} is corrupt or not the original file (md5 {digest}, expected {md5}): "
                                        "replace it with the original MNIST file of that name")


@lru_cache(maxsize=4)
def _load_mnist(train: bool, root: str, download: bool):
    from torchvision.datasets import MNIST

    _check_md5s(Path(root) / "MNIST" / "raw")
    try:
        dataset = MNIST(root=root, train=train, download=download)
    except (RuntimeError, OSError) as error:  # torchvision: "Dataset not found", or a network failure
        raise FileNotFoundError(
            f"MNIST could not be loaded from {root} ({error}). Put the four original files "
            f"({', '.join(MNIST_FILES)}) in {Path(root) / 'MNIST' / 'raw'}, or set DIFFUSION_COURSE_DATA "
            "to a folder that holds MNIST/raw/ with them."
        ) from error
    images = dataset.data.float().div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, 28, 28) in [-1, 1]
    return images, dataset.targets.long()


def make_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points (n, 2) of a 2-D toy distribution, scaled to roughly unit variance."""
    makers = {"moons": _moons, "swissroll": _swissroll, "gaussians": _gaussians, "checkerboard": _checkerboard}
    if name not in makers:
        raise ValueError(f"unknown toy data set {name!r}: choose one of {', '.join(TOY_DATASETS)}")
    return makers[name](n, generator)


def _rand(n, generator):
    return torch.rand(n, generator=generator)


def _moons(n, generator):
    """Two interleaving half circles (as scikit-learn's make_moons), with Gaussian jitter 0.05."""
    upper = n // 2
    angle = math.pi * _rand(n, generator)
    x = torch.where(torch.arange(n) < upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(torch.arange(n) < upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x, y], dim=1) + 0.05 * torch.randn(n, 2, generator=generator)
    return (points - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])


def _swissroll(n, generator):
    """A 2-D Swiss roll: radius growing with the angle, 1.5 pi to 4.5 pi."""
    angle = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    points = torch.stack([angle * torch.cos(angle), angle * torch.sin(angle)], dim=1)
    return (points + 0.3 * torch.randn(n, 2, generator=generator)) / 7.5


def _gaussians(n, generator):
    """A mixture of 8 Gaussians (std 0.1) on a circle of radius 1.5."""
    k = torch.randint(0, 8, (n,), generator=generator)
    centres = 1.5 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1)
    return centres + 0.1 * torch.randn(n, 2, generator=generator)


def _checkerboard(n, generator):
    """Uniform on the dark squares of a 4x4 checkerboard covering [-2, 2]^2."""
    x1 = 4 * _rand(n, generator) - 2
    x2 = torch.rand(n, generator=generator) + torch.randint(0, 2, (n,), generator=generator) * 2.0 - 2
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], dim=1)
