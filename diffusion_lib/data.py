"""Data: image sets as tensors in [-1, 1] (MNIST, Fashion-MNIST, a folder of your own), and 2-D toys made in code.

MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0) and Fashion-MNIST (Xiao, Rasul and Vollgraf 2017,
Zalando SE; MIT) are read with torchvision from the repository's `data/` folder, where their four
original files are committed in torchvision's layout (`data/MNIST/raw/*.gz`, `data/FashionMNIST/raw/*.gz`).
Where that folder is absent (a pip install on Colab) the files are downloaded into
`~/.cache/diffusion_course`. The environment variable `DIFFUSION_COURSE_DATA` names another folder.

`folder:PATH` is a folder of PNG or JPEG images (BMP, GIF, WebP and TIFF too; HEIC and camera raw files are
refused by name) of any size: each is resized (shorter side) and
centre-cropped to a square of `image_size` pixels, in grayscale (1 channel) or RGB (3). Class
subfolders (PATH/cat/*.png, PATH/dog/*.png) make it labelled, for `--conditional`; the classes are
the subfolder names in sorted order.

| data name       | images (N, C, H, W) by default | labels                          |
| --------------- | ------------------------------ | ------------------------------- |
| `mnist`         | (60000, 1, 28, 28); test 10000 | the digit 0-9                   |
| `fashion-mnist` | (60000, 1, 28, 28); test 10000 | `CLASSES["fashion-mnist"]`      |
| `folder:PATH`   | (N, 3, 32, 32)                 | the class subfolder, if any     |
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
CACHE_DATA = Path.home() / ".cache" / "diffusion_course"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # data name -> torchvision class and folder
IMAGE_DATASETS = tuple(TORCHVISION_SETS)
TOY_DATASETS = ("moons", "swissroll", "gaussians", "checkerboard")
DATASETS = IMAGE_DATASETS + TOY_DATASETS
FOLDER = "folder:"  # prefix of a folder of one's own images, "folder:PATH"
CLASSES = {"mnist": tuple(str(d) for d in range(10)),
           "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot")}
NATIVE_SHAPE = (1, 28)  # (channels, size) of MNIST and Fashion-MNIST
FOLDER_SHAPE = (3, 32)  # (channels, size) a folder is read at unless told otherwise
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # what Pillow reads
UNREADABLE_SUFFIXES = (".heic", ".heif", ".avif", ".raw", ".cr2", ".nef", ".dng", ".psd", ".svg")  # photos it cannot
MAX_ASPECT = 4.0  # a centre crop of a wider (or taller) image would keep less than a quarter of it
MAX_PIXELS = 40_000_000  # a 40-megapixel photo decodes to 120 MB of RGB; larger ones are refused before decoding


def check_data_name(name: str) -> None:
    """Raise a one-line error for a data name that is none of `DATASETS` and not "folder:PATH"."""
    if name in DATASETS or (name.startswith(FOLDER) and len(name) > len(FOLDER)):
        return
    raise ValueError(f"unknown data {name!r}: choose one of {', '.join(DATASETS)}, or folder:PATH for a folder of "
                     "your own PNG or JPEG images")


def is_image_data(name: str) -> bool:
    """Whether a data name (as stored in a checkpoint's info) holds images rather than 2-D points."""
    return name not in TOY_DATASETS


def default_shape(name: str) -> tuple[int, int]:
    """(channels, size) a data set is read at when the run does not set them."""
    return FOLDER_SHAPE if name.startswith(FOLDER) else NATIVE_SHAPE


def data_root() -> tuple[Path, bool]:
    """The folder to read MNIST and Fashion-MNIST from, and whether downloading into it from the internet is allowed."""
    if os.environ.get("DIFFUSION_COURSE_DATA"):
        return Path(os.environ["DIFFUSION_COURSE_DATA"]), False
    if (REPO_DATA / "MNIST" / "raw").is_dir():
        return REPO_DATA, False
    return CACHE_DATA, True


def load_mnist(train: bool = True, root: str | Path | None = None, download: bool | None = None):
    """MNIST as (images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64); see `load_torchvision`."""
    return load_torchvision("mnist", train, root, download)


def load_fashion_mnist(train: bool = True, root: str | Path | None = None, download: bool | None = None):
    """Fashion-MNIST as (images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64); see `load_torchvision`."""
    return load_torchvision("fashion-mnist", train, root, download)


def load_torchvision(name: str, train: bool = True, root: str | Path | None = None, download: bool | None = None):
    """MNIST or Fashion-MNIST as (images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64).

    With no `root`, uses `data_root()`. Where the original .gz files are present, torchvision
    verifies their md5s and extracts them without any network access. Raises FileNotFoundError
    saying where to put the files when they are missing and cannot be downloaded.
    """
    default_root, default_download = data_root()
    root = Path(root) if root is not None else default_root
    if download is None:
        download = default_download or all((root / TORCHVISION_SETS[name] / "raw" / f).is_file() for f in MNIST_FILES)
    return _load_torchvision(name, train, str(root), download)


def _dataset_class(name: str):
    import torchvision.datasets

    return getattr(torchvision.datasets, TORCHVISION_SETS[name])


def _check_md5s(name: str, raw: Path) -> None:
    """Raise a clear error for a file that is present but not the original (torchvision would try to download it)."""
    for file, md5 in _dataset_class(name).resources:
        path = raw / file
        if path.is_file():
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest != md5:
                raise FileNotFoundError(f"{path} is corrupt or not the original file (md5 {digest}, expected {md5}): "
                                        f"replace it with the original {TORCHVISION_SETS[name]} file of that name")


@lru_cache(maxsize=4)
def _load_torchvision(name: str, train: bool, root: str, download: bool):
    folder = TORCHVISION_SETS[name]
    _check_md5s(name, Path(root) / folder / "raw")
    try:
        dataset = _dataset_class(name)(root=root, train=train, download=download)
    except (RuntimeError, OSError) as error:  # torchvision: "Dataset not found", or a network failure
        raise FileNotFoundError(
            f"{folder} could not be loaded from {root} ({error}). Put the four original files "
            f"({', '.join(MNIST_FILES)}) in {Path(root) / folder / 'raw'}, or set DIFFUSION_COURSE_DATA "
            f"to a folder that holds {folder}/raw/ with them."
        ) from error
    images = dataset.data.float().div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, 28, 28) in [-1, 1]
    return images, dataset.targets.long()


def load_images(name: str, train: bool = True, channels: int | None = None, size: int | None = None):
    """(images (N, C, size, size) float32 in [-1, 1], labels (N,) int64 or None) of an image data set.

    `channels` (1 or 3) and `size` default to `default_shape(name)`. MNIST and Fashion-MNIST are
    resized with antialiasing when another size is asked for, and their gray repeated for RGB.
    A folder has no test split: `train=False` reads the same images.
    """
    check_data_name(name)
    if not is_image_data(name):
        raise ValueError(f"{name!r} is 2-D point data, not images: use make_toy")
    channels, size = (channels or default_shape(name)[0], size or default_shape(name)[1])
    if channels not in (1, 3) or size < 4:
        raise ValueError(f"images need 1 (grayscale) or 3 (RGB) channels and a size of at least 4, got {channels} "
                         f"channels at {size}x{size}")
    if name.startswith(FOLDER):
        return load_folder(name[len(FOLDER):], channels, size)
    images, labels = load_torchvision(name, train)
    return resize_images(images, channels, size), labels


def resize_images(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Images (N, C, H, W) resized to (N, channels, size, size); gray repeats into RGB, RGB averages into gray."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True).expand(-1, channels, -1, -1).contiguous()
    return images


def image_classes(name: str) -> tuple[str, ...] | None:
    """The class names of an image data set (a folder's class subfolders, sorted), or None for unlabelled data."""
    if name in CLASSES:
        return CLASSES[name]
    if name.startswith(FOLDER):
        return _class_folders(_folder(name[len(FOLDER):]))[1] or None
    return None


def _is_image(path: Path) -> bool:
    """An image file Pillow reads (PNG, JPEG, ...), not hidden (macOS writes ._NAME companions that are not images)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _folder(path: str | Path) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no folder at {root}: --data folder:PATH needs a folder of PNG or JPEG images")
    return root


def _class_folders(root: Path) -> tuple[list[Path], tuple[str, ...]]:
    """(the images directly in root, the names of its subfolders that hold images), with one-line errors."""
    _refuse_unreadable(root)
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__MACOSX"))
                           and any(_is_image(p) for p in d.iterdir())))
    if loose and classes:
        raise ValueError(f"{root} holds both images ({loose[0].name}, ...) and class subfolders ({classes[0]}, ...): "
                         "put every image in a class subfolder, or none")
    if not loose and not classes:
        raise ValueError(f"{root} holds no PNG or JPEG images (nor class subfolders of them)")
    return loose, classes


def _refuse_unreadable(root: Path) -> None:
    """An image file in a format Pillow cannot read would otherwise be left out without a word: refuse it."""
    for path in sorted(root.glob("*")) + sorted(root.glob("*/*")):
        if path.is_file() and path.suffix.lower() in UNREADABLE_SUFFIXES and not path.name.startswith("."):
            raise ValueError(f"{path} is a {path.suffix[1:].upper()} image, which cannot be read here: convert it to "
                             "PNG or JPEG, or move it out of the folder")


def _folder_listing(path: str | Path) -> tuple[list[tuple[Path, int | None]], tuple[str, ...] | None]:
    """([(image file, class index or None)], class names or None) of a folder."""
    root = _folder(path)
    loose, classes = _class_folders(root)
    if classes:
        return [(p, k) for k, name in enumerate(classes) for p in sorted((root / name).iterdir()) if _is_image(p)], classes
    return [(p, None) for p in loose], None


def load_folder(path: str | Path, channels: int = FOLDER_SHAPE[0], size: int = FOLDER_SHAPE[1]):
    """(images (N, channels, size, size) in [-1, 1], labels (N,) or None) of a folder of PNG or JPEG images.

    Each image is cropped to its largest centred square, which is then resized to `size` x `size` (the same as
    resizing the shorter side to `size` and centre-cropping, without blending in pixels outside the crop).
    """
    files, classes = _folder_listing(path)
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p, _ in files)
    images = _read_folder(stamp, channels, size)
    labels = None if classes is None else torch.tensor([k for _, k in files])
    return images, labels


@lru_cache(maxsize=4)
def _read_folder(stamp: tuple, channels: int, size: int) -> torch.Tensor:
    return torch.stack([_read_image(Path(file), channels, size) for file, _, _ in stamp])


def _eight_bit(image):
    """An image as PIL's 8-bit modes read it: 16- and 32-bit gray scaled to 0..255 (PIL's own conversion clips
    them), and transparent images laid on white (a photo's cut-out background)."""
    from PIL import Image

    if image.mode.startswith("I"):  # "I;16", "I;16B", "I": integers up to 65535
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array / (257 if array.max() > 255 else 1), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image


class OversizedImage(ValueError):
    """An image file too large to decode here (`MAX_PIXELS`)."""


def _refuse_oversized(path: Path, width: int, height: int) -> None:
    """Refuse, by name and before decoding, an image whose header declares more than `MAX_PIXELS` pixels."""
    if width * height > MAX_PIXELS:
        raise OversizedImage(f"{path} is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the "
                         f"{MAX_PIXELS // 1_000_000} megapixels read here: shrink it or move it out of the folder")


def _read_image(path: Path, channels: int, size: int) -> torch.Tensor:
    """One image file as (channels, size, size) in [-1, 1]: its largest centred square, resized to `size`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused here, by name, if too large
            with Image.open(path) as opened:  # reads the header only: the size is known before any pixel is decoded
                _refuse_oversized(path, *opened.size)
                image = _eight_bit(ImageOps.exif_transpose(opened)).convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError:  # Pillow's own refusal, from the header, of over ~180 megapixels
        raise ValueError(f"{path} declares over {2 * Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels, far more than the "
                         f"{MAX_PIXELS // 1_000_000} read here: shrink it or move it out of the folder") from None
    except OversizedImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, MemoryError) as error:
        raise ValueError(f"{path} cannot be read as an image ({error}): replace or remove it") from None
    width, height = image.size
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ValueError(f"{path} is {width}x{height}: a square centre crop would keep less than a quarter of it; "
                         "crop it by hand or remove it")
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC, reducing_gap=3.0)
    pixels = torch.frombuffer(bytearray(square.tobytes()), dtype=torch.uint8)
    return pixels.reshape(size, size, channels).permute(2, 0, 1).float().div(127.5).sub(1.0)


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
