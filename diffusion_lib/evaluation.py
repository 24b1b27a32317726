"""Measured sample quality, all in `score`: MNIST-FID (or Fashion-MNIST-FID, ...) over its real floor, the share
recognised, requested-class accuracy, class histogram and diversity.

FID (Heusel et al. 2017, Eq. 6) compares two sets of images through Gaussians fitted to their
features:

    FID = ||mu_1 - mu_2||^2 + Tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2})

Here the features are the committed MNIST classifier's 128-d penultimate activations
("MNIST-FID"), not Inception's, and the reference set is the MNIST test set. Other data sets are judged
the same way by a classifier of their own (`committed_classifier`: `fashion_classifier` for Fashion-MNIST). FID is biased
upwards at small sample counts, so `score` always reports beside it the FID of the same
number of *real* training images against the same reference: a sample set is only as good as
its distance to that baseline.

| code              | meaning                                                       |
| ----------------- | ------------------------------------------------------------- |
| `mu`, `cov`       | mean (D,) and covariance (D, D) of features, float64          |
| `accuracy`        | fraction classified as the requested label                    |
| `recognised`      | fraction the judge names with probability >= 0.9 (`RECOGNISED`) |
| `fid_ratio`       | FID over the real floor at the same n: 1 is as close as real images get |
| `diversity`       | mean pairwise pixel distance between samples of one class, averaged over classes |
| `energy_distance` | for 2-D data (chapters 8 and 11): 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||, 0 for one distribution |
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .checkpoint import pretrained
from .classifier import Classifier, classify
from .data import FOLDER, load_images


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The energy distance between point sets a (N, D) and b (M, D), 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||
    (Szekely & Rizzo): zero when both come from one distribution. Unbiased: a point's distance to itself is left
    out of the last two terms, so two samples of one distribution score about 0, sometimes slightly below."""
    within = lambda x: torch.cdist(x, x).sum() / (len(x) * (len(x) - 1))  # noqa: E731
    return (2 * torch.cdist(a, b).mean() - within(a) - within(b)).item()


@torch.no_grad()
def features(classifier: Classifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate-layer features (N, D), float64, of images (N, C, H, W) in [-1, 1] of the classifier's shape."""
    classifier.eval()
    device = next(classifier.parameters()).device
    return torch.cat([classifier.features(images[i:i + batch_size].to(device)).double().cpu()
                      for i in range(0, len(images), batch_size)])


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), covariance (D, D)) of features (N, D), N >= 2."""
    if len(feats) < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {len(feats)}")
    return feats.mean(0), torch.cov(feats.T)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix through its eigendecomposition."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2). Heusel et al. 2017, Eq. 6."""
    root1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(root1 @ cov2 @ root1)  # (C1^1/2 C2 C1^1/2)^1/2, same trace as (C1 C2)^1/2
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * torch.trace(cross))


COMMITTED_CLASSIFIERS = {"mnist": "mnist_classifier", "fashion-mnist": "fashion_classifier"}


def committed_classifier(data: str = "mnist") -> Classifier:
    """The committed judge of a data set's images; a folder of one's own needs a classifier trained on it."""
    if data not in COMMITTED_CLASSIFIERS:
        raise ValueError(f"no committed classifier judges {data!r}: train one with 'python -m diffusion_lib train "
                         f"--data {data} --arch classifier' (it needs class subfolders) and pass it as --classifier")
    return pretrained(COMMITTED_CLASSIFIERS[data])[0]


def judged_data(classifier: Classifier, data: str | None = None) -> str:
    """The data set a classifier judges: the one it was trained on (`load_model` records it; MNIST for a classifier
    built in Python). Asking it to judge another is an error, not a silently wrong FID."""
    trained_on = getattr(classifier, "trained_on", None)
    if data is not None and trained_on is not None and data != trained_on:
        raise ValueError(f"this classifier was trained on {trained_on}, so it cannot judge {data} images: give a "
                         f"classifier of {data} (for Fashion-MNIST, the committed fashion_classifier)")
    return data or trained_on or "mnist"


def _shaped(data: str, train: bool, classifier: Classifier):
    c = classifier.config
    return load_images(data, train, c.image_channels, c.image_size)


def _reference_stats(classifier: Classifier, data: str):
    """(mean, covariance) of the classifier's features of `data`'s test images."""
    return gaussian_stats(features(classifier, _shaped(data, False, classifier)[0]))


_cached_reference_stats = lru_cache(maxsize=4)(_reference_stats)


def _reference(classifier: Classifier, data: str):
    """The reference statistics; cached, except for a folder, which may change between calls."""
    return (_reference_stats if data.startswith(FOLDER) else _cached_reference_stats)(classifier, data)


def fid(images: torch.Tensor, classifier: Classifier, data: str | None = None) -> float:
    """FID of images in `classifier`'s features against the test set of the data it judges (`judged_data`;
    a folder: all of its images). With the MNIST classifier this is MNIST-FID; with `fashion_classifier`,
    Fashion-MNIST-FID.
    """
    data = judged_data(classifier, data)
    mu, cov = gaussian_stats(features(classifier, images))
    return frechet_distance(mu, cov, *_reference(classifier, data))


def mnist_fid(images: torch.Tensor, classifier: Classifier) -> float:
    """MNIST-FID of images against the 10,000 MNIST test digits."""
    return fid(images, classifier, "mnist")


def real_baseline_fid(n: int, classifier: Classifier, seed: int = 0, data: str | None = None) -> float:
    """The FID of n random real training images: the best a sample set of size n can expect.

    A folder has no test split, so its floor draws n of the very images it is compared with and is lower
    than a held-out set's would be.
    """
    data = judged_data(classifier, data)
    train_images, _ = _shaped(data, True, classifier)
    if n > len(train_images):
        raise ValueError(f"the real floor at n = {n} needs {n} real images, but {data} has {len(train_images)}: "
                         f"measure at most {len(train_images)} samples")
    index = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[:n]
    return fid(train_images[index], classifier, data)


def diversity(images: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean pairwise L2 pixel distance between images of the same class, averaged over classes with >= 2 images."""
    per_class = []
    for c in classes.unique():
        members = images[classes == c].flatten(1).double()
        if len(members) >= 2:
            distances = torch.cdist(members, members)
            per_class.append(distances.sum() / (len(members) * (len(members) - 1)))
    if not per_class:
        raise ValueError("diversity needs at least one class with two or more images")
    return float(torch.stack(per_class).mean())


RECOGNISED = 0.9  # a sample is "recognised" when the judge names a class with probability >= 0.9 (chapter 1)


def recognised(classifier: Classifier, images: torch.Tensor, threshold: float = RECOGNISED):
    """(share the classifier names with probability >= threshold, predicted classes (N,), probabilities (N,))."""
    predicted, confidence = classify(classifier, images)
    return (confidence >= threshold).float().mean().item(), predicted, confidence


def score(images: torch.Tensor, labels: torch.Tensor | None = None, classifier: Classifier | None = None,
          data: str | None = None, floor: bool = True) -> dict:
    """Every measure of a sample set the course reports, in one dict: what `python -m diffusion_lib evaluate` prints,
    the chapters show and the benchmarks record.

    `fid` against `data`'s test images (also as `mnist_fid` for MNIST); with `floor`, `real_baseline_fid`, the FID
    of as many real training images, and `fid_ratio`, the two's ratio (1 is as good as real data at this n); the
    share `recognised` (the judge's top probability >= 0.9); `accuracy`, the share classified as the requested
    `labels`, when given; `diversity` within predicted classes; the `class_histogram` of predictions.

    `classifier` None takes the committed one for `data` (`committed_classifier`; data None: MNIST); a classifier
    given judges the data it was trained on (`judged_data`).
    """
    classifier = classifier if classifier is not None else committed_classifier(data or "mnist")
    data = judged_data(classifier, data)
    _check_judged(images, labels, classifier.config)
    share, predicted, _ = recognised(classifier, images)
    distance = fid(images, classifier, data)
    result = {"n": len(images), "data": data, "fid": distance, **({"mnist_fid": distance} if data == "mnist" else {})}
    if floor:
        result["real_baseline_fid"] = real_baseline_fid(len(images), classifier, data=data)
        result["fid_ratio"] = distance / result["real_baseline_fid"]
    result.update({"recognised": share, "diversity": diversity(images, predicted),
                   "class_histogram": torch.bincount(predicted, minlength=classifier.config.num_classes).tolist()})
    if labels is not None:
        result["accuracy"] = float((predicted == labels.cpu()).float().mean())
    return result


evaluate = score  # the name the command and the first chapters use


def _check_judged(images: torch.Tensor, labels: torch.Tensor | None, c) -> None:
    """Refuse what the judge cannot measure: another shape, too few images, non-finite values, pixels outside
    [-1, 1], labels that are not one whole class per image."""
    shape = (c.image_channels, c.image_size, c.image_size)
    if images.ndim != 4 or images.shape[1:] != shape:
        raise ValueError(f"the classifier judges images of shape (N, {', '.join(map(str, shape))}), "
                         f"got {tuple(images.shape)}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 images to measure (FID needs a covariance), got {len(images)}")
    if not bool(images.isfinite().all()):
        raise ValueError("images hold NaN or infinite values: the model that made them diverged; retrain it")
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError(f"images must lie in [-1, 1], got values in [{images.min():.2f}, {images.max():.2f}]")
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if labels is not None and (labels.is_floating_point() or labels.min() < 0 or labels.max() >= c.num_classes):
        raise ValueError(f"labels must be whole classes 0-{c.num_classes - 1}, got {labels.dtype} values in "
                         f"[{labels.min()}, {labels.max()}]")
